"""A docker token service for a sandbox registry with ``auth.token``.

It checks credentials against a user table and grants every action
requested in ``repository:<name>:<actions>`` scopes to a known user. Docker
Engine and skopeo send a GET with Basic credentials. containerd 1.6 first
POSTs an OAuth2 password grant (form fields ``grant_type=password``,
``username``, ``password``, ``scope``) and gives up on a 501 reply, so the
service accepts both. Tokens
are ES256 JWTs signed with a key generated at start, whose self-signed
certificate is the registry's ``rootcertbundle``. The registry finds the
key by the ``kid`` header, which distribution derives from the public key
(libtrust key ID: base32 of the first 240 bits of the SHA-256 of the DER
public key, in groups of four separated by colons).
"""

import base64
import binascii
import datetime
import hashlib
import json
import logging
import secrets
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

log = logging.getLogger(__name__)

TOKEN_PATH = "/token"


def _base64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def libtrust_key_id(public_key) -> str:
    """Return the key ID that distribution's token auth computes for a public key."""
    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode("ascii").rstrip("=")

    return ":".join(encoded[index:index + 4] for index in range(0, len(encoded), 4))


def parse_scopes(values: list[str]) -> list[dict]:
    """Return JWT ``access`` entries for ``repository:<name>:<actions>`` scopes.

    Other resource types and malformed scopes are left out, so they are
    not granted.
    """
    access = []
    for value in values:
        for scope in value.split(" "):
            resource_type, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if resource_type != "repository" or not name or not actions:
                continue
            access.append({"type": "repository", "name": name,
                           "actions": [action for action in actions.split(",") if action]})

    return access


class TokenIssuer:
    """A token service on a loopback port, served by a thread of this process."""

    def __init__(self, workdir: Path, users: dict[str, str], host: str = "127.0.0.1",
                 service: str = "registry-p2p-sandbox",
                 issuer: str = "registry-p2p-sandbox-issuer", expires_in: int = 300):
        self.workdir = Path(workdir)
        self.users = dict(users)
        self.host = host
        self.service = service
        self.issuer = issuer
        self.expires_in = expires_in
        self.certificate_path = self.workdir / "token-issuer.pem"
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self._key = None
        self._key_id = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def realm(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{TOKEN_PATH}"

    def registry_auth(self) -> dict:
        """Return the registry's ``auth`` section that trusts this issuer."""
        return {"token": {"realm": self.realm, "service": self.service, "issuer": self.issuer,
                          "rootcertbundle": str(self.certificate_path)}}

    def token_requests(self) -> list[dict]:
        """Return every token request so far: "user", "scopes" and "status" (int)."""
        with self._lock:
            return list(self.requests)

    def start(self) -> "TokenIssuer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._key_id = libtrust_key_id(self._key.public_key())
        self.certificate_path.write_bytes(
            self._certificate().public_bytes(serialization.Encoding.PEM))

        self._server = ThreadingHTTPServer((self.host, 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="token-issuer", daemon=True)
        self._thread.start()
        log.info("token issuer ready at %s for service %s", self.realm, self.service)

        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=10)

    def __enter__(self) -> "TokenIssuer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def issue(self, user: str, access: list[dict]) -> str:
        """Return a signed JWT that grants ``access`` to ``user``."""
        now = int(time.time())
        header = {"typ": "JWT", "alg": "ES256", "kid": self._key_id}
        claims = {"iss": self.issuer, "sub": user, "aud": self.service, "exp": now + self.expires_in,
                  "nbf": now - 10, "iat": now, "jti": secrets.token_hex(16), "access": access}
        signing_input = (_base64url(json.dumps(header).encode()) + "."
                         + _base64url(json.dumps(claims).encode()))

        # An ES256 JWS signature is the raw r || s, 32 bytes each (RFC 7518
        # section 3.4), not the DER encoding that cryptography returns.
        der = self._key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")

        return signing_input + "." + _base64url(signature)

    def check_credentials(self, authorization: str | None) -> str | None:
        """Return the user named by valid Basic credentials, or None."""
        scheme, _, encoded = (authorization or "").partition(" ")
        if scheme.lower() != "basic":
            return None

        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None

        return self._known_user(user, password)

    def _known_user(self, user: str, password: str) -> str | None:
        if user in self.users and secrets.compare_digest(self.users[user], password):
            return user
        return None

    def _record(self, user: str | None, scopes: list[str], status: int) -> None:
        with self._lock:
            self.requests.append({"user": user, "scopes": scopes, "status": status})

    def _certificate(self) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.issuer)])
        now = datetime.datetime.now(datetime.timezone.utc)
        return (x509.CertificateBuilder()
                .subject_name(name).issuer_name(name)
                .public_key(self._key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .sign(self._key, hashes.SHA256()))

    def _handler_class(self):
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                url = urlsplit(self.path)
                if url.path != TOKEN_PATH:
                    self._reply(HTTPStatus.NOT_FOUND, {"details": "not found"})
                    return

                query = parse_qs(url.query)
                scopes = query.get("scope", [])
                user = issuer.check_credentials(self.headers.get("Authorization"))
                if user is None:
                    issuer._record(None, scopes, int(HTTPStatus.UNAUTHORIZED))
                    self._reply(HTTPStatus.UNAUTHORIZED, {"details": "invalid credentials"},
                                {"WWW-Authenticate": 'Basic realm="registry-p2p-sandbox-token"'})
                    return

                token = issuer.issue(user, parse_scopes(scopes))
                issuer._record(user, scopes, int(HTTPStatus.OK))
                self._reply(HTTPStatus.OK, {"token": token, "access_token": token,
                                            "expires_in": issuer.expires_in})

            def do_POST(self):
                url = urlsplit(self.path)
                if url.path != TOKEN_PATH:
                    self._reply(HTTPStatus.NOT_FOUND, {"details": "not found"})
                    return

                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(length).decode("utf-8", errors="replace"))
                scopes = form.get("scope", [])
                if form.get("grant_type") != ["password"]:
                    issuer._record(None, scopes, int(HTTPStatus.BAD_REQUEST))
                    self._reply(HTTPStatus.BAD_REQUEST, {"error": "unsupported_grant_type"})
                    return

                user = issuer._known_user(form.get("username", [""])[0],
                                          form.get("password", [""])[0])
                if user is None:
                    issuer._record(None, scopes, int(HTTPStatus.UNAUTHORIZED))
                    self._reply(HTTPStatus.UNAUTHORIZED, {"error": "invalid_grant"})
                    return

                token = issuer.issue(user, parse_scopes(scopes))
                issuer._record(user, scopes, int(HTTPStatus.OK))
                self._reply(HTTPStatus.OK, {
                    "access_token": token, "scope": " ".join(scopes),
                    "expires_in": issuer.expires_in,
                    "issued_at": datetime.datetime.now(datetime.timezone.utc).isoformat()})

            def _reply(self, status, document, headers=None):
                body = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format, *args):
                log.debug("token issuer: %s", format % args)

        return Handler
