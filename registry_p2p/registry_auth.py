"""Log in to a registry's API with fixed credentials: Basic auth or the docker token flow.

A registry with htpasswd auth accepts ``Authorization: Basic`` on every
request. A registry with token auth responds with 401 and a challenge such as
``Bearer realm="https://auth.example.org/token",service="registry",
scope="repository:app:pull"``. The client then sends ``GET <realm>?service=
<service>&scope=<scope>`` with its Basic credentials to get a token, and
repeats the request with ``Authorization: Bearer <token>``.
"""

import base64
import logging
import re
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests

from registry_p2p.errors import RegistryAuthError

log = logging.getLogger(__name__)

# Token lifetime when the token service sends no expires_in, as
# distribution's token authentication specification (docs/spec/auth/token.md)
# defines it.
DEFAULT_TOKEN_SECONDS = 60

# RFC 9110 section 5.6.2: token characters.
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_SCHEME = re.compile(rf"[\s,]*({_TOKEN})(?=[\s,]|$)\s*")
_PARAM = re.compile(rf'({_TOKEN})\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,"]*)\s*(?:,\s*|$)')
_QUOTED_PAIR = re.compile(r"\\(.)")


def parse_challenges(header):
    """Parse a ``WWW-Authenticate`` value into {scheme: {parameter: value}}.

    Scheme and parameter names are lowercased, and quoted values are
    unquoted. Several challenges in one header (``Basic realm="a", Bearer
    realm="b"``) give several entries. Parsing stops at the first part
    that is not a challenge or parameter and returns what came before it.
    """
    challenges = {}
    params = None
    position = 0
    while position < len(header):
        match = _PARAM.match(header, position) if params is not None else None
        if match is not None:
            value = match.group(2)
            if value.startswith('"'):
                value = _QUOTED_PAIR.sub(r"\1", value[1:-1])
            params[match.group(1).lower()] = value
            position = match.end()
            continue

        match = _SCHEME.match(header, position)
        if match is None:
            break
        params = challenges.setdefault(match.group(1).lower(), {})
        position = match.end()

    return challenges


def pull_scope(repository):
    """Return the token scope that grants pulling from ``repository``."""
    return f"repository:{repository}:pull"


def basic_authorization(username, password):
    """Return the ``Authorization`` value for Basic auth."""
    credentials = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {credentials}"


@dataclass(frozen=True)
class Token:
    value: str
    expires_in: float


def parse_token_response(document):
    """Return the Token in a token service's JSON reply.

    The reply carries the token in ``token`` or, OAuth2 style, in
    ``access_token``, and its lifetime in ``expires_in`` (60 s when
    missing or not a positive number). Raises RegistryAuthError when there
    is no token.
    """
    if not isinstance(document, dict):
        raise RegistryAuthError("token service reply is not a JSON object")

    value = document.get("token") or document.get("access_token")
    if not isinstance(value, str) or not value:
        raise RegistryAuthError("token service reply has no token or access_token")

    expires_in = document.get("expires_in")
    if isinstance(expires_in, bool) or not isinstance(expires_in, (int, float)) or expires_in <= 0:
        expires_in = DEFAULT_TOKEN_SECONDS

    return Token(value, float(expires_in))


class TokenCache:
    """Tokens by scope, each kept until its lifetime ends. Thread-safe."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._tokens = {}
        self._lock = threading.Lock()

    def get(self, scope):
        """Return the unexpired token value for ``scope``, or None."""
        with self._lock:
            cached = self._tokens.get(scope)
            if cached is None:
                return None

            value, expires_at = cached
            if self._clock() >= expires_at:
                del self._tokens[scope]
                return None

        return value

    def put(self, scope, token):
        with self._lock:
            self._tokens[scope] = (token.value, self._clock() + token.expires_in)


class RegistryAuth:
    """Credentials for one registry and the tokens got with them, cached per scope.

    Thread-safe: sidecar request threads share one instance. Two threads
    that miss the cache at once may both fetch a token, and the cache keeps
    the later one.
    """

    def __init__(self, http, username, password, timeout, clock=time.monotonic):
        self.http = http
        self.username = username
        self._basic = basic_authorization(username, password) if username else None
        self.timeout = timeout
        self.tokens = TokenCache(clock)

    def authorization(self, scope):
        """Return the ``Authorization`` value to send first for ``scope``, or None.

        That is a cached, unexpired token for the scope, else Basic
        credentials, else None when no username is configured.
        """
        token = self.tokens.get(scope)
        if token is not None:
            return f"Bearer {token}"

        return self._basic

    def renew(self, challenge_header, scope):
        """Get a token after a 401 and return the new ``Authorization`` value.

        Returns None when the challenge is not a Bearer challenge (a Basic
        challenge or none), because then only other credentials would help.
        Raises RegistryAuthError when the token service fails or rejects the
        credentials.
        """
        bearer = parse_challenges(challenge_header or "").get("bearer")
        if bearer is None:
            return None

        realm = bearer.get("realm", "")
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RegistryAuthError(f"registry sent a Bearer challenge with an invalid realm "
                                    f"{realm!r}; expected an http:// or https:// URL")

        token = self._fetch(realm, bearer.get("service"), scope)
        self.tokens.put(scope, token)
        log.debug("got a token for %s from %s, valid for %.0f s", scope, realm, token.expires_in)

        return f"Bearer {token.value}"

    def _fetch(self, realm, service, scope):
        params = {"scope": scope}
        if service:
            params["service"] = service
        headers = {"Authorization": self._basic} if self._basic else {}

        try:
            response = self.http.get(realm, params=params, headers=headers, timeout=self.timeout)
        except requests.RequestException as exc:
            raise RegistryAuthError(f"token service {realm} unreachable: "
                                    f"{type(exc).__name__}") from None

        with response:
            if response.status_code in (401, 403):
                raise RegistryAuthError(f"token service {realm} rejected the credentials of "
                                        f"{self.username!r} for {scope} with HTTP "
                                        f"{response.status_code}", rejected=True)
            if response.status_code != 200:
                raise RegistryAuthError(f"token service {realm} returned HTTP "
                                        f"{response.status_code} for {scope}")
            try:
                document = response.json()
            except ValueError:
                raise RegistryAuthError(f"token service {realm} sent a reply that is not "
                                        f"JSON for {scope}") from None

        try:
            return parse_token_response(document)
        except RegistryAuthError as exc:
            raise RegistryAuthError(f"token service {realm}: {exc}") from None
