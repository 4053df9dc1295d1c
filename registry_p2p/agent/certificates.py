"""The agent's local CA and the leaf certificates it issues for intercepted registries.

The CA signs one leaf certificate per registry host, whose only subject
alternative name is that host as ``[[registries]] name`` writes it: a DNS
name, or an IP address. Leaves are issued when the first CONNECT to the
host arrives and kept in memory; the agent's whole life uses one leaf key.
"""

import datetime
import ipaddress
import logging
import os
import secrets
import socket
import ssl
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from registry_p2p.errors import ConfigError

log = logging.getLogger(__name__)

CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
DEFAULT_CA_DIR = Path("/etc/registry-p2p/ca")

CA_VALIDITY = datetime.timedelta(days=5 * 365)
# A CA with less time left than this is refused at start.
CA_MIN_REMAINING = datetime.timedelta(days=1)
LEAF_VALIDITY = datetime.timedelta(days=30)
# A cached leaf is replaced once it has less than this left.
LEAF_RENEW_BEFORE = datetime.timedelta(days=1)
# Tolerance for clients whose clocks are a little behind the agent's.
CLOCK_SKEW = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class LocalCA:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def not_valid_after(certificate):
    """Return the end of a certificate's validity as an aware UTC datetime.

    cryptography 42 added ``not_valid_after_utc`` and deprecated the naive
    ``not_valid_after``; Debian bookworm ships cryptography 38.
    """
    aware = getattr(certificate, "not_valid_after_utc", None)
    if aware is not None:
        return aware

    return certificate.not_valid_after.replace(tzinfo=datetime.timezone.utc)


def host_general_name(host):
    """Return the SAN entry for ``host``: an IPAddress for an IP literal, else a DNSName."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return x509.DNSName(host.lower())


def _name_constraints(hosts):
    """Return NameConstraints that permit exactly ``hosts``, or None for no hosts.

    A DNS name permits that name and its subdomains (RFC 5280 4.2.1.10); an
    IP address permits that single address.
    """
    permitted = []
    for host in hosts:
        name = host_general_name(host)
        if isinstance(name, x509.IPAddress):
            prefix = name.value.max_prefixlen
            name = x509.IPAddress(ipaddress.ip_network(f"{name.value}/{prefix}"))
        if name not in permitted:
            permitted.append(name)

    if not permitted:
        return None

    return x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=None)


def build_ca(common_name, hosts=(), now=None):
    """Create a CA key and its self-signed certificate.

    With ``hosts``, the certificate carries name constraints that permit
    only those hosts, so that TLS clients reject any other certificate it
    might sign.
    """
    now = now or _now()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "registry-p2p"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])
    public_key = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    constraints = _name_constraints(hosts)
    if constraints is not None:
        builder = builder.add_extension(constraints, critical=True)

    return LocalCA(builder.sign(key, hashes.SHA256()), key)


def build_leaf(ca, host, key, now=None):
    """Sign a TLS server certificate for ``host`` with ``key``'s public key.

    Its validity ends LEAF_VALIDITY from ``now``, or with the CA's, whichever
    is earlier.
    """
    now = now or _now()
    not_after = min(now + LEAF_VALIDITY, not_valid_after(ca.certificate))
    public_key = key.public_key()
    ca_key_id = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    builder = (
        x509.CertificateBuilder()
        # No common name: OpenSSL checks a CN that looks like a DNS name
        # against the CA's DNS name constraints, which an IP address fails.
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "registry-p2p")]))
        .issuer_name(ca.certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([host_general_name(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
            ca_key_id.value), critical=False)
    )

    return builder.sign(ca.key, hashes.SHA256())


def _pem_key(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_ca(ca, directory, force=False):
    """Write ``ca.key`` (mode 0600) and ``ca.crt`` (mode 0644) into ``directory``.

    Existing files are replaced only with ``force``; otherwise ConfigError
    is raised and nothing is written.
    """
    directory = Path(directory)
    key_path = directory / CA_KEY_FILE
    cert_path = directory / CA_CERT_FILE
    existing = [str(path) for path in (key_path, cert_path) if path.exists()]
    if existing and not force:
        raise ConfigError(f"{' and '.join(existing)} already exist; pass --force to replace "
                          f"them, then install the new ca.crt everywhere the old one was")

    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    _write_private(key_path, _pem_key(ca.key))
    cert_path.write_bytes(ca.certificate.public_bytes(serialization.Encoding.PEM))
    cert_path.chmod(0o644)

    return key_path, cert_path


def _write_private(path, data):
    """Replace ``path`` with ``data`` in a file created with mode 0600, never wider."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as key_file:
        key_file.write(data)
    os.replace(temporary, path)


def load_ca(directory):
    """Read the CA from ``directory``; the ConfigError raised names what is missing or invalid."""
    directory = Path(directory)
    key_path = directory / CA_KEY_FILE
    cert_path = directory / CA_CERT_FILE
    try:
        key_bytes = key_path.read_bytes()
        cert_bytes = cert_path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the agent's CA in {directory}: {exc.filename}: "
                          f"{exc.strerror}; create it with: registry-p2p agent ca --dir "
                          f"{directory}") from None

    mode = key_path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(f"{key_path} has mode {mode:04o}, so other users can read the CA's "
                          f"private key; run: chmod 600 {key_path}")

    try:
        key = serialization.load_pem_private_key(key_bytes, password=None)
        certificate = x509.load_pem_x509_certificate(cert_bytes)
    except ValueError as exc:
        raise ConfigError(f"the agent's CA in {directory} is not a PEM key and certificate "
                          f"({exc}); recreate it with: registry-p2p agent ca --force --dir "
                          f"{directory}") from None

    if certificate.public_key().public_numbers() != key.public_key().public_numbers():
        raise ConfigError(f"{cert_path} does not belong to the key {key_path}; recreate both "
                          f"with: registry-p2p agent ca --force --dir {directory}")

    # Leaf certificates end with the CA, so a CA this close to its end
    # could not issue them.
    expires = not_valid_after(certificate)
    if expires < datetime.datetime.now(datetime.timezone.utc) + CA_MIN_REMAINING:
        raise ConfigError(f"the agent's CA in {directory} expires {expires:%Y-%m-%d %H:%M} UTC; "
                          f"recreate it with: registry-p2p agent ca --force --dir {directory}, "
                          f"then install the new ca.crt where the old one was")

    return LocalCA(certificate, key)


def permitted_hosts(ca):
    """Return the CA's permitted DNS names and IP networks, or None without name constraints."""
    try:
        constraints = ca.certificate.extensions.get_extension_for_class(x509.NameConstraints)
    except x509.ExtensionNotFound:
        return None

    return [name.value for name in constraints.value.permitted_subtrees or []]


def ca_permits(ca, host):
    """Return whether the CA's name constraints allow a leaf for ``host``."""
    permitted = permitted_hosts(ca)
    if permitted is None:
        return True

    name = host_general_name(host)
    for entry in permitted:
        if isinstance(name, x509.IPAddress):
            if isinstance(entry, (ipaddress.IPv4Network, ipaddress.IPv6Network)) \
                    and name.value in entry:
                return True
        elif isinstance(entry, str) and (name.value == entry
                                         or name.value.endswith("." + entry)):
            return True

    return False


class LeafContexts:
    """Server-side SSLContexts with a leaf certificate per host, issued on first use."""

    def __init__(self, ca):
        self.ca = ca
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._lock = threading.Lock()
        self._contexts = {}

    def context_for(self, host):
        """Return the SSLContext that presents the leaf certificate for ``host``."""
        with self._lock:
            cached = self._contexts.get(host)
            if cached is not None and cached[1] - _now() > LEAF_RENEW_BEFORE:
                return cached[0]

            certificate = build_leaf(self.ca, host, self._key)
            context = self._server_context(certificate)
            not_after = not_valid_after(certificate)
            self._contexts[host] = (context, not_after)

        log.info("issued a TLS certificate for %s, serial %x, valid until %s", host,
                 certificate.serial_number, not_after.isoformat())
        return context

    def _server_context(self, certificate):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # HTTP/2 is not served inside tunnels; offering only http/1.1 keeps
        # clients that try h2 (Go's net/http does) on HTTP/1.1.
        context.set_alpn_protocols(["http/1.1"])
        chain = (certificate.public_bytes(serialization.Encoding.PEM)
                 + self.ca.certificate.public_bytes(serialization.Encoding.PEM))

        # ssl loads a certificate chain and key only from files. They live
        # in a private temporary directory for the duration of the call.
        with tempfile.TemporaryDirectory(prefix="registry-p2p-leaf-") as directory:
            chain_path = Path(directory) / "chain.pem"
            key_path = Path(directory) / "key.pem"
            chain_path.write_bytes(chain)
            _write_private(key_path, _pem_key(self._key))
            context.load_cert_chain(chain_path, key_path)

        return context


def installed_ca_paths(registry_names):
    """Return where Docker Engine looks for a registry's CA: /etc/docker/certs.d/<name>/ca.crt."""
    return [Path("/etc/docker/certs.d") / name / CA_CERT_FILE for name in registry_names]


def default_common_name():
    return f"registry-p2p agent CA on {socket.gethostname()}"
