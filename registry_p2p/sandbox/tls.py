"""TLS material for sandbox servers: a test CA, server certificates it signs, Docker's certs.d."""

import contextlib
import datetime
import ipaddress
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

log = logging.getLogger(__name__)

# Docker Engine's directory of per-registry CAs. Rootless dockerd reads
# one under its own config directory instead, but the sandbox runs dockerd
# as root.
DOCKER_CERTS_DIR = Path("/etc/docker/certs.d")
_VALIDITY = datetime.timedelta(days=2)


@dataclass(frozen=True)
class ServerCertificate:
    """PEM files of a server certificate, its key and the CA that signed it."""

    certificate_path: Path
    key_path: Path
    ca_path: Path


def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path, key):
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def make_server_certificate(directory: Path, host: str,
                            ca_name: str = "registry-p2p sandbox test CA") -> ServerCertificate:
    """Create a test CA and a certificate for `host` (IP address or DNS name) signed by it.

    Writes ca.crt, server.crt (the certificate followed by the CA) and
    server.key into `directory`. CAs with different `ca_name`s let a
    client's failed verification report an unknown issuer instead of a bad
    signature.
    """
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(ca_name))
        .issuer_name(_name(ca_name))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    try:
        alternative_name = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        alternative_name = x509.DNSName(host)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(host))
        .issuer_name(ca_certificate.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.SubjectAlternativeName([alternative_name]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    ca_pem = ca_certificate.public_bytes(serialization.Encoding.PEM)
    paths = ServerCertificate(directory / "server.crt", directory / "server.key",
                              directory / "ca.crt")
    paths.ca_path.write_bytes(ca_pem)
    paths.certificate_path.write_bytes(
        server_certificate.public_bytes(serialization.Encoding.PEM) + ca_pem)
    _write_key(paths.key_path, server_key)

    return paths


@contextlib.contextmanager
def docker_registry_ca(hostport: str, ca_path: Path, certs_dir: Path = DOCKER_CERTS_DIR):
    """Install `ca_path` as `<certs_dir>/<hostport>/ca.crt` for the duration of the block.

    Creates only that directory, and `certs_dir` if it is missing, and
    removes what it created afterwards. Raises FileExistsError rather than
    touch a `hostport` directory that already exists.
    """
    host_dir = certs_dir / hostport
    created_certs_dir = not certs_dir.exists()
    certs_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    host_dir.mkdir(mode=0o755)
    try:
        (host_dir / "ca.crt").write_bytes(Path(ca_path).read_bytes())
        log.info("installed %s as %s", ca_path, host_dir / "ca.crt")
        yield host_dir / "ca.crt"
    finally:
        (host_dir / "ca.crt").unlink(missing_ok=True)
        host_dir.rmdir()
        log.info("removed %s", host_dir)
        if created_certs_dir:
            try:
                os.rmdir(certs_dir)
            except OSError as exc:
                # Another sandbox may have added a directory meanwhile.
                log.info("left %s in place: %s", certs_dir, exc)
