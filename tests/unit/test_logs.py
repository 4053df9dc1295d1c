"""Log lines: request id and blob fields, one line per event, credentials left out."""

import io
import logging
import os
import tempfile

import pytest

from registry_p2p import logs
from registry_p2p.webapp import create_flask_app

DIGEST = "sha256:" + "ab" * 32


@pytest.fixture
def lines():
    """Set up logging as the services do and return a function that reads the lines so far."""
    logs.setup("debug", "registry-p2p-test")
    [handler] = logging.getLogger().handlers
    buffer = io.StringIO()
    handler.setStream(buffer)
    logs.clear_request_id()

    yield lambda: buffer.getvalue().splitlines()

    logging.getLogger().removeHandler(handler)


@pytest.fixture
def app():
    flask_app = create_flask_app("test")

    @flask_app.get("/v2/<path:_rest>")
    def ok(_rest):
        return "body"

    return flask_app


def test_line_outside_request(lines):
    logging.getLogger("registry_p2p.test").info("started")

    [line] = lines()
    assert " INFO registry-p2p-test[" in line
    assert line.endswith("registry_p2p.test [-] started")


def test_blob_fields_follow_request_id(lines):
    request_id = logs.new_request_id("abc-123")
    logs.set_blob("library/alpine", DIGEST)
    logging.getLogger("registry_p2p.test").warning("fetch failed")

    [line] = lines()
    assert f"[{request_id} repository=library/alpine digest={DIGEST}] fetch failed" in line


def test_new_request_clears_blob_fields(lines):
    logs.new_request_id()
    logs.set_blob("library/alpine", DIGEST)
    logs.new_request_id("next")
    logging.getLogger("registry_p2p.test").info("other")

    [line] = lines()
    assert "[next] other" in line


def test_printable_escapes_newline():
    assert logs.printable("/v2/a\nINFO forged") == "/v2/a\\nINFO forged"


def test_printable_cuts_long_text():
    assert logs.printable("x" * 1000, limit=10) == "x" * 10 + "..."


def test_blob_request_line_has_fields(lines, app):
    response = app.test_client().get(f"/v2/library/alpine/blobs/{DIGEST}",
                                     headers={"X-Request-Id": "req-1"})

    request_lines = [line for line in lines() if "req-1" in line]
    assert response.status_code == 200
    assert len(request_lines) == 1
    assert f"[req-1 repository=library/alpine digest={DIGEST}]" in request_lines[0]
    assert request_lines[0].endswith(f"GET /v2/library/alpine/blobs/{DIGEST} -> 200 (4 bytes)")


def test_manifest_tag_is_no_digest(lines, app):
    app.test_client().get("/v2/library/alpine/manifests/3.19", headers={"X-Request-Id": "req-2"})

    [line] = [line for line in lines() if "req-2" in line]
    assert "[req-2 repository=library/alpine]" in line


def test_credentials_not_logged(lines, app):
    app.test_client().get("/v2/library/alpine/manifests/latest?token=query-secret",
                          headers={"Authorization": "Bearer header-secret"})

    output = "\n".join(lines())
    assert "/v2/library/alpine/manifests/latest -> 200" in output
    assert "query-secret" not in output
    assert "header-secret" not in output


def test_encoded_newline_stays_on_one_line(lines, app):
    app.test_client().get("/v2/library/alpine%0AERROR%20forged/manifests/latest")

    output = lines()
    assert not any(line.startswith("ERROR forged") for line in output)
    assert any("alpine\\nERROR forged" in line for line in output)


def test_journal_stream_matches_stderr(monkeypatch):
    with tempfile.TemporaryFile() as stream:
        saved = os.dup(2)
        os.dup2(stream.fileno(), 2)
        try:
            status = os.fstat(2)
            monkeypatch.setenv("JOURNAL_STREAM", f"{status.st_dev}:{status.st_ino}")
            under_journal = logs.stderr_is_journal()
            monkeypatch.setenv("JOURNAL_STREAM", f"{status.st_dev}:{status.st_ino + 1}")
            other_stream = logs.stderr_is_journal()
        finally:
            os.dup2(saved, 2)
            os.close(saved)

    assert under_journal
    assert not other_stream


def test_journal_stream_unset_keeps_timestamp(monkeypatch, lines):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    logging.getLogger("registry_p2p.test").info("started")

    [line] = lines()
    assert not logs.stderr_is_journal()
    assert line.startswith("20")
    assert " INFO " in line
