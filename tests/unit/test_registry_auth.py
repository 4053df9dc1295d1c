"""Challenge parsing, token replies and the token cache of registry_p2p.registry_auth."""

import base64

import pytest

from registry_p2p.errors import RegistryAuthError
from registry_p2p.registry_auth import (Token, TokenCache, basic_authorization,
                                        parse_challenges, parse_token_response, pull_scope)


@pytest.mark.parametrize("header, expected", [
    pytest.param(
        'Bearer realm="http://127.0.0.1:5001/token",service="registry",'
        'scope="repository:app:pull",error="invalid_token"',
        {"bearer": {"realm": "http://127.0.0.1:5001/token", "service": "registry",
                    "scope": "repository:app:pull", "error": "invalid_token"}},
        id="distribution-bearer"),
    pytest.param('Basic realm="registry-p2p-sandbox"',
                 {"basic": {"realm": "registry-p2p-sandbox"}}, id="htpasswd-basic"),
    pytest.param('Bearer realm="https://auth.example.org/token", '
                 'scope="repository:team/app:pull,push"',
                 {"bearer": {"realm": "https://auth.example.org/token",
                             "scope": "repository:team/app:pull,push"}},
                 id="comma-inside-quotes"),
    pytest.param('Basic realm="a", Bearer realm="https://b/token",service=reg',
                 {"basic": {"realm": "a"}, "bearer": {"realm": "https://b/token",
                                                      "service": "reg"}},
                 id="two-challenges"),
    pytest.param('BEARER Realm = "x" , Service="y"', {"bearer": {"realm": "x", "service": "y"}},
                 id="case-and-spaces"),
    pytest.param(r'Bearer realm="say \"hi\"\\"', {"bearer": {"realm": 'say "hi"\\'}},
                 id="quoted-pairs"),
    pytest.param("Bearer realm=https://b/token?x=1", {"bearer": {"realm": "https://b/token?x=1"}},
                 id="unquoted-value"),
    pytest.param("Negotiate", {"negotiate": {}}, id="scheme-only"),
    pytest.param("", {}, id="empty"),
    pytest.param('="x"', {}, id="no-scheme"),
    pytest.param('Bearer realm="x" garbage=', {"bearer": {}}, id="missing-comma-stops"),
])
def test_parse_challenges(header, expected):
    assert parse_challenges(header) == expected


def test_parse_challenges_unterminated_quote():
    # An unterminated quoted string is not a parameter, so parsing stops there.
    assert parse_challenges('Bearer realm="x') == {"bearer": {}}


def test_pull_scope():
    assert pull_scope("team/app") == "repository:team/app:pull"


def test_basic_authorization():
    value = basic_authorization("sidecar", "pa:ss wörd")

    assert value.startswith("Basic ")
    assert base64.b64decode(value[len("Basic "):]) == "sidecar:pa:ss wörd".encode()


@pytest.mark.parametrize("document, expected", [
    pytest.param({"token": "t1", "expires_in": 300}, Token("t1", 300.0), id="token"),
    pytest.param({"access_token": "t2", "expires_in": 120}, Token("t2", 120.0),
                 id="access-token"),
    pytest.param({"token": "t3", "access_token": "t3"}, Token("t3", 60.0), id="default-lifetime"),
    pytest.param({"token": "t4", "expires_in": 0}, Token("t4", 60.0), id="zero-lifetime"),
    pytest.param({"token": "t5", "expires_in": "300"}, Token("t5", 60.0), id="string-lifetime"),
    pytest.param({"token": "t6", "expires_in": True}, Token("t6", 60.0), id="bool-lifetime"),
])
def test_parse_token_response(document, expected):
    assert parse_token_response(document) == expected


@pytest.mark.parametrize("document", [
    pytest.param({}, id="no-token"),
    pytest.param({"token": ""}, id="empty-token"),
    pytest.param({"token": 5}, id="number-token"),
    pytest.param(["token"], id="not-an-object"),
])
def test_parse_token_response_without_token(document):
    with pytest.raises(RegistryAuthError):
        parse_token_response(document)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_token_cache_keeps_token_until_expiry():
    clock = FakeClock()
    cache = TokenCache(clock)
    cache.put("repository:app:pull", Token("t1", 60.0))

    clock.now += 59.9
    assert cache.get("repository:app:pull") == "t1"

    clock.now += 0.1
    assert cache.get("repository:app:pull") is None


def test_token_cache_is_per_scope():
    cache = TokenCache(FakeClock())
    cache.put("repository:app:pull", Token("t1", 60.0))

    assert cache.get("repository:other:pull") is None
    assert cache.get("repository:app:pull") == "t1"


def test_token_cache_replaces_token():
    cache = TokenCache(FakeClock())
    cache.put("repository:app:pull", Token("old", 60.0))
    cache.put("repository:app:pull", Token("new", 60.0))

    assert cache.get("repository:app:pull") == "new"
