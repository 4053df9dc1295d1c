"""How storage.swift.* options map to swiftclient's and keystoneauth1's arguments."""

import logging

import pytest
from keystoneauth1 import access, exceptions as keystone_exceptions, session as keystone_session
from keystoneauth1.identity import v3 as keystone_identity
from swiftclient.client import ClientException, Connection

from registry_p2p import config
from registry_p2p.errors import ConfigError
from registry_p2p.storage.swift import auth

KEYSTONE_URL = "https://keystone.example.org:5000/v3"
TEMPAUTH_URL = "https://swift.example.org/auth/v1.0"


def swift_config(**options):
    """Load a sidecar config whose [storage.swift] table has ``options``."""
    values = {"container": "registry", "username": "registry", "password": "s3cr3t",
              "authurl": KEYSTONE_URL, "tenant": "registry-project", **options}
    lines = ['[storage]', 'driver = "swift"', '[storage.swift]']
    for key, value in values.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, int):
            lines.append(f"{key} = {value}")
        else:
            lines.append(f'{key} = "{value}"')
    return config.load(config.SIDECAR_OPTIONS, text="\n".join(lines) + "\n")


def catalog_token(endpoints):
    """Return a Keystone v3 token with one object-store service and ``endpoints``.

    ``endpoints`` is a list of (interface, region, url).
    """
    body = {"token": {
        "methods": ["password"],
        "expires_at": "2999-01-01T00:00:00.000000Z",
        "issued_at": "2000-01-01T00:00:00.000000Z",
        "user": {"id": "u1", "name": "registry", "domain": {"id": "default", "name": "Default"}},
        "project": {"id": "p1", "name": "registry-project",
                    "domain": {"id": "default", "name": "Default"}},
        "catalog": [{
            "type": "object-store", "name": "swift", "id": "s1",
            "endpoints": [{"id": f"e{index}", "interface": interface, "region": region,
                           "region_id": region, "url": url}
                          for index, (interface, region, url) in enumerate(endpoints)],
        }],
    }}
    return access.create(body=body, auth_token="token-from-catalog")


ENDPOINTS = [
    ("public", "RegionOne", "https://one.example.org/v1/AUTH_p1"),
    ("internal", "RegionOne", "http://one.internal/v1/AUTH_p1"),
    ("public", "RegionTwo", "https://two.example.org/v1/AUTH_p1"),
    ("internal", "RegionTwo", "http://two.internal/v1/AUTH_p1"),
]


# Auth version


@pytest.mark.parametrize("url, version, expected", [
    pytest.param(TEMPAUTH_URL, 0, 1, id="tempauth-url"),
    pytest.param(KEYSTONE_URL, 0, 3, id="keystone-url"),
    pytest.param("https://keystone.example.org/identity/v3/", 0, 3, id="keystone-path"),
    pytest.param("https://auth.example.org/", 1, 1, id="explicit-1"),
    pytest.param("https://auth.example.org/", 3, 3, id="explicit-3"),
    pytest.param(TEMPAUTH_URL, 3, 3, id="explicit-wins"),
])
def test_auth_version(url, version, expected):
    assert auth.auth_version(swift_config(authurl=url, authversion=version)) == expected


def test_auth_version_v2_url_rejected():
    with pytest.raises(ConfigError) as caught:
        auth.auth_version(swift_config(authurl="https://keystone.example.org/v2.0"))

    assert "v2" in str(caught.value)


def test_auth_version_unknown_url_rejected():
    with pytest.raises(ConfigError) as caught:
        auth.auth_version(swift_config(authurl="https://auth.example.org/"))

    assert "storage.swift.authversion" in str(caught.value)


@pytest.mark.parametrize("value", [2, 4, -1, True, '"3"', 3.0])
def test_authversion_invalid_value(value):
    text = f"[storage.swift]\nauthversion = {str(value).lower()}\n"

    with pytest.raises(ConfigError) as caught:
        config.load(config.SIDECAR_OPTIONS, text=text)

    assert "'storage.swift.authversion'" in str(caught.value)


def test_authversion_2_message():
    with pytest.raises(ConfigError) as caught:
        config.load(config.SIDECAR_OPTIONS, text="[storage.swift]\nauthversion = 2\n")

    assert "Keystone v2 is not supported" in str(caught.value)


@pytest.mark.parametrize("text", [
    pytest.param('[storage.swift]\nendpointtype = "publicURL"\n', id="endpointtype"),
    pytest.param('[storage.swift]\ninsecureskipverify = "yes"\n', id="insecureskipverify"),
])
def test_keystone_option_invalid_value(text):
    with pytest.raises(ConfigError):
        config.load(config.SIDECAR_OPTIONS, text=text)


# Swift v1 auth


def test_v1_connection_options():
    options = auth.connection_options(swift_config(authurl=TEMPAUTH_URL, username="test:tester"))

    assert options == {"authurl": TEMPAUTH_URL, "user": "test:tester", "key": "s3cr3t",
                       "retries": auth.RETRIES, "timeout": 30.0, "insecure": False}


def test_v1_insecureskipverify():
    options = auth.connection_options(swift_config(authurl=TEMPAUTH_URL,
                                                   insecureskipverify=True))

    assert options["insecure"] is True


def test_v1_connection_accepts_options():
    connection = Connection(**auth.connection_options(swift_config(authurl=TEMPAUTH_URL)))

    assert (connection.authurl, connection.user, connection.key) == (TEMPAUTH_URL, "registry",
                                                                     "s3cr3t")
    assert connection.session is None


@pytest.mark.parametrize("name", ["authurl", "username", "password"])
@pytest.mark.parametrize("url", [TEMPAUTH_URL, KEYSTONE_URL])
def test_missing_credential_rejected(name, url):
    options = {"authurl": url, name: ""}
    if name == "authurl":
        options["authversion"] = 3 if url == KEYSTONE_URL else 1

    with pytest.raises(ConfigError) as caught:
        auth.connection_options(swift_config(**options))

    assert f"storage.swift.{name}" in str(caught.value)


# Keystone v3: the password plugin's arguments


@pytest.mark.parametrize("options, expected", [
    pytest.param({}, {"project_name": "registry-project", "project_domain_name": "Default"},
                 id="project-in-default-domain"),
    pytest.param({"tenantdomain": "Projects"},
                 {"project_name": "registry-project", "project_domain_name": "Projects"},
                 id="tenantdomain"),
    pytest.param({"tenantdomainid": "d-projects"},
                 {"project_name": "registry-project", "project_domain_id": "d-projects"},
                 id="tenantdomainid"),
    pytest.param({"tenantdomain": "Projects", "tenantdomainid": "d-projects"},
                 {"project_name": "registry-project", "project_domain_name": "Projects"},
                 id="tenantdomain-wins"),
    pytest.param({"domain": "Users"},
                 {"user_domain_name": "Users", "project_name": "registry-project",
                  "project_domain_name": "Users"},
                 id="domain-for-both"),
    pytest.param({"domainid": "d-users"},
                 {"user_domain_id": "d-users", "project_name": "registry-project",
                  "project_domain_id": "d-users"},
                 id="domainid-for-both"),
    pytest.param({"domain": "Users", "domainid": "d-users"},
                 {"user_domain_name": "Users", "project_name": "registry-project",
                  "project_domain_name": "Users"},
                 id="domain-wins"),
    pytest.param({"domain": "Users", "tenantdomainid": "d-projects"},
                 {"user_domain_name": "Users", "project_name": "registry-project",
                  "project_domain_id": "d-projects"},
                 id="user-and-project-domains"),
    pytest.param({"tenantid": "p1", "tenantdomain": "Projects"}, {"project_id": "p1"},
                 id="tenantid-wins"),
    pytest.param({"tenant": "", "tenantid": "p1"}, {"project_id": "p1"}, id="tenantid-only"),
    pytest.param({"trustid": "t1", "domain": "Users"},
                 {"trust_id": "t1", "user_domain_name": "Users"}, id="trust-wins"),
])
def test_keystone_password_arguments(options, expected):
    arguments = auth.keystone_password_arguments(swift_config(**options))

    assert arguments == {"auth_url": KEYSTONE_URL, "username": "registry",
                         "password": "s3cr3t", **expected}
    keystone_identity.Password(**arguments)


def test_trust_over_tenant_logged(caplog):
    caplog.set_level(logging.WARNING, logger="registry_p2p.storage.swift.auth")

    auth.keystone_password_arguments(swift_config(trustid="t1"))

    assert "trust t1" in caplog.text
    assert "s3cr3t" not in caplog.text


def test_keystone_without_scope_rejected():
    with pytest.raises(ConfigError) as caught:
        auth.keystone_password_arguments(swift_config(tenant=""))

    assert "storage.swift.tenant" in str(caught.value)


# Keystone v3: the session and swiftclient's Connection


def test_keystone_connection_options():
    options = auth.connection_options(swift_config(region="RegionTwo",
                                                   endpointtype="internal"))

    assert isinstance(options["session"], auth.SharedKeystoneSession)
    assert isinstance(options["session"].session, keystone_session.Session)
    assert options["os_options"] == {"service_type": "object-store",
                                     "endpoint_type": "internal", "region_name": "RegionTwo"}
    assert (options["retries"], options["timeout"], options["insecure"]) == (
        auth.RETRIES, 30.0, False)
    assert "key" not in options


def test_keystone_session_plugin():
    session = auth.connection_options(swift_config(domain="Users"))["session"].session
    plugin = session.auth
    method = plugin.auth_methods[0]

    assert isinstance(plugin, keystone_identity.Password)
    assert plugin.auth_url == KEYSTONE_URL
    assert (method.username, method.password, method.user_domain_name) == (
        "registry", "s3cr3t", "Users")
    assert (plugin.project_name, plugin.project_domain_name) == ("registry-project", "Users")
    assert session.verify is True
    assert session.timeout == 30.0


def test_keystone_insecureskipverify():
    options = auth.connection_options(swift_config(insecureskipverify=True))

    assert options["session"].session.verify is False
    assert options["insecure"] is True


@pytest.mark.parametrize("region, endpointtype, expected", [
    pytest.param("", "public", ENDPOINTS[0][2], id="first-public"),
    pytest.param("RegionTwo", "public", ENDPOINTS[2][2], id="region-public"),
    pytest.param("RegionOne", "internal", ENDPOINTS[1][2], id="region-internal"),
    pytest.param("RegionTwo", "internal", ENDPOINTS[3][2], id="other-region-internal"),
])
def test_keystone_connection_picks_endpoint(monkeypatch, region, endpointtype, expected):
    options = auth.connection_options(swift_config(region=region, endpointtype=endpointtype))
    token = catalog_token(ENDPOINTS)
    monkeypatch.setattr(options["session"].session.auth, "get_auth_ref",
                        lambda session, **_: token)

    storage_url, token_id = Connection(**options).get_auth()

    assert storage_url == expected
    assert token_id == "token-from-catalog"


def test_keystoneauth1_missing(monkeypatch):
    monkeypatch.setattr(auth, "keystone_identity", None)

    with pytest.raises(ConfigError) as caught:
        auth.connection_options(swift_config())

    assert "python3-keystoneauth1" in str(caught.value)
    assert "pip install keystoneauth1" in str(caught.value)


def test_shared_session_always_retries(monkeypatch):
    session = auth.connection_options(swift_config())["session"]
    token = catalog_token(ENDPOINTS)
    monkeypatch.setattr(session.session.auth, "get_auth_ref", lambda session, **_: token)
    session.get_token()

    assert session.invalidate() is True
    assert session.invalidate() is True
    assert session.session.auth.auth_ref is None


@pytest.mark.parametrize("error, status", [
    pytest.param(keystone_exceptions.Unauthorized("The request you have made requires "
                                                  "authentication."), 401, id="unauthorized"),
    pytest.param(keystone_exceptions.ConnectFailure("Unable to establish connection"), None,
                 id="connect-failure"),
])
def test_keystone_error_becomes_client_exception(monkeypatch, error, status):
    options = auth.connection_options(swift_config())

    def fail(session, **_):
        raise error

    monkeypatch.setattr(options["session"].session.auth, "get_auth_ref", fail)

    with pytest.raises(ClientException) as caught:
        Connection(**options).get_auth()

    assert caught.value.http_status == status
    assert KEYSTONE_URL in str(caught.value)
    assert "s3cr3t" not in str(caught.value)
