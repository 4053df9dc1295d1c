"""Requests that gunicorn cannot parse get the registry's JSON error format."""

import json

from gunicorn.http.errors import (InvalidHeader, InvalidRequestLine, LimitRequestHeaders,
                                  LimitRequestLine)

from registry_p2p.server import parse_error, raw_error_response


def _parts(response):
    head, _, body = response.partition(b"\r\n\r\n")
    return head.decode("latin-1").split("\r\n"), json.loads(body)


def test_header_limit_is_431():
    error = parse_error(LimitRequestHeaders("limit request headers fields size"))

    assert error.status == 431
    assert error.code == "UNSUPPORTED"


def test_line_limit_is_414():
    assert parse_error(LimitRequestLine(9000, 4094)).status == 414


def test_other_parse_error_is_400():
    assert parse_error(InvalidHeader("X")).status == 400


def test_detail_leaves_request_line_out():
    error = parse_error(InvalidRequestLine("GET /v2/?token=secret HTTP/9.9 junk"))

    assert "secret" not in error.detail
    assert error.detail == "InvalidRequestLine"


def test_raw_response_is_complete():
    response = raw_error_response(parse_error(LimitRequestHeaders("too many")))

    head, body = _parts(response)
    body_length = len(response.partition(b"\r\n\r\n")[2])
    assert head[0] == "HTTP/1.1 431 Request Header Fields Too Large"
    assert "Content-Type: application/json; charset=utf-8" in head
    assert "Connection: close" in head
    assert f"Content-Length: {body_length}" in head
    assert body["errors"][0]["code"] == "UNSUPPORTED"
