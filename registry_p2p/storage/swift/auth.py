"""Arguments of swiftclient's Connection for Swift v1 auth or Keystone v3.

The storage.swift.* options mean what distribution 2.8's swift driver,
through the ncw/swift client, makes of them. authversion 0 takes the
version from authurl. A trust ID wins over a project. A project given by
name is looked up in the first domain that is set of tenantdomain,
tenantdomainid, domain and domainid, or else in the domain named Default.

With Keystone v3 all connections share one keystoneauth1 Session. When a
token expires or is revoked, swiftclient gets a 401, invalidates the
session and repeats the request, and the session authenticates again, so a
read in progress continues.
"""

import contextlib
import logging

from registry_p2p.errors import ConfigError

try:
    from keystoneauth1 import exceptions as keystone_exceptions, session as keystone_session
    from keystoneauth1.identity import v3 as keystone_identity
except ImportError:
    # keystoneauth1 is needed only with Keystone v3; keystone_session_for()
    # then raises ConfigError naming the package.
    keystone_exceptions = keystone_session = keystone_identity = None

try:
    from swiftclient.exceptions import ClientException
except ImportError:
    # The driver raises ConfigError naming python-swiftclient before this is used.
    ClientException = None

log = logging.getLogger(__name__)

# swiftclient's retries of a failed request. swiftclient and keystoneauth1
# wait the sidecar's upstream_timeout to connect or for data.
RETRIES = 2

OBJECT_STORE = "object-store"


def auth_version(config):
    """Return 1 or 3: storage.swift.authversion, or the version that authurl names."""
    version = config["storage.swift.authversion"]
    if version:
        return version

    # ncw/swift checks for "v3", then "v2", then "v1" anywhere in the URL.
    url = config["storage.swift.authurl"]
    if "v3" in url:
        return 3
    if "v2" in url:
        raise ConfigError(f"storage.swift.authurl {url!r} names Keystone v2, which is not "
                          f"supported; use Keystone's v3 URL and authversion = 3")
    if "v1" in url:
        return 1

    raise ConfigError(f"cannot tell the auth version from storage.swift.authurl {url!r}; "
                      f"set storage.swift.authversion to 1 or 3")


def connection_options(config):
    """Return the keyword arguments of swiftclient's Connection for the sidecar's config.

    Raises ConfigError for missing credentials and, with Keystone v3, when
    keystoneauth1 is not installed.
    """
    for name in ("authurl", "username", "password"):
        if not config[f"storage.swift.{name}"]:
            raise ConfigError(f"storage.driver is \"swift\" but storage.swift.{name} is "
                              f"empty; set it to the registry's storage.swift.{name}")

    common = {"retries": RETRIES, "timeout": config["upstream_timeout"],
              "insecure": config["storage.swift.insecureskipverify"]}
    if auth_version(config) == 1:
        return {**common, "authurl": config["storage.swift.authurl"],
                "user": config["storage.swift.username"], "key": config["storage.swift.password"]}

    region = config["storage.swift.region"]
    return {
        **common,
        "session": keystone_session_for(config),
        "os_options": {
            "service_type": OBJECT_STORE,
            "endpoint_type": config["storage.swift.endpointtype"],
            "region_name": region or None,
        },
    }


class SharedKeystoneSession:
    """The keystoneauth1 Session of all of a driver's connections, as swiftclient calls it.

    swiftclient repeats a request that got 401 only when the session's
    invalidate() returns True. keystoneauth1 returns False when the token is
    already invalidated, which happens when another thread's request got
    401 a moment earlier, so this invalidate() always returns True. Errors of
    Keystone become swiftclient's ClientException, which the driver handles.
    """

    def __init__(self, session, auth_url):
        self.session = session
        self.auth_url = auth_url

    def get_endpoint(self, **kwargs):
        with self._keystone_errors():
            return self.session.get_endpoint(**kwargs)

    def get_token(self):
        with self._keystone_errors():
            return self.session.get_token()

    def invalidate(self):
        log.info("swift returned 401: authenticating with Keystone at %s again", self.auth_url)
        self.session.invalidate()
        return True

    @contextlib.contextmanager
    def _keystone_errors(self):
        try:
            yield
        except keystone_exceptions.ClientException as exc:
            raise ClientException(f"Keystone authentication at {self.auth_url} failed: {exc}",
                                  http_status=getattr(exc, "http_status", None)) from exc


def keystone_session_for(config):
    """Return a SharedKeystoneSession that authenticates with a v3 password."""
    if keystone_identity is None:
        raise ConfigError("storage.swift.authversion 3 (Keystone) needs keystoneauth1: "
                          "apt-get install python3-keystoneauth1, or pip install keystoneauth1")

    password = keystone_identity.Password(**keystone_password_arguments(config))
    log.info("swift storage authenticates with Keystone v3 at %s as user %s",
             config["storage.swift.authurl"], config["storage.swift.username"])

    session = keystone_session.Session(auth=password,
                                       verify=not config["storage.swift.insecureskipverify"],
                                       timeout=config["upstream_timeout"])
    return SharedKeystoneSession(session, config["storage.swift.authurl"])


def keystone_password_arguments(config):
    """Return the keyword arguments of keystoneauth1.identity.v3.Password."""
    option = _swift_options(config)
    arguments = {"auth_url": option["authurl"], "username": option["username"],
                 "password": option["password"]}

    if option["domain"]:
        arguments["user_domain_name"] = option["domain"]
    elif option["domainid"]:
        arguments["user_domain_id"] = option["domainid"]

    if option["trustid"]:
        if option["tenant"] or option["tenantid"]:
            log.warning("storage.swift.trustid is set, so storage.swift.tenant and tenantid "
                        "are not used: the token is scoped to trust %s", option["trustid"])
        arguments["trust_id"] = option["trustid"]
    elif option["tenantid"]:
        arguments["project_id"] = option["tenantid"]
    elif option["tenant"]:
        arguments["project_name"] = option["tenant"]
        arguments.update(_project_domain(option))
    else:
        # An unscoped token has no catalog, so it has no object-store endpoint.
        raise ConfigError("storage.swift.authversion 3 (Keystone) needs storage.swift.tenant, "
                          "tenantid or trustid: set the registry's value")

    return arguments


def _project_domain(option):
    """Return the domain argument of a project given by name, as ncw/swift chooses it."""
    if option["tenantdomain"]:
        return {"project_domain_name": option["tenantdomain"]}
    if option["tenantdomainid"]:
        return {"project_domain_id": option["tenantdomainid"]}
    if option["domain"]:
        return {"project_domain_name": option["domain"]}
    if option["domainid"]:
        return {"project_domain_id": option["domainid"]}

    return {"project_domain_name": "Default"}


def _swift_options(config):
    names = ("authurl", "username", "password", "domain", "domainid", "tenant", "tenantid",
             "tenantdomain", "tenantdomainid", "trustid")
    return {name: config[f"storage.swift.{name}"] for name in names}
