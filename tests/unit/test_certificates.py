"""The agent's CA and leaf certificates: extensions, SANs, files, and TLS handshakes with them."""

import datetime
import ipaddress
import socket
import ssl
import stat
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from registry_p2p.agent import certificates
from registry_p2p.errors import ConfigError


def _extension(certificate, kind):
    return certificate.extensions.get_extension_for_class(kind)


def _pem(certificate):
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture(scope="module")
def open_ca():
    return certificates.build_ca("test CA")


@pytest.fixture(scope="module")
def constrained_ca():
    return certificates.build_ca("test CA", ["registry.example.org", "10.0.0.5", "[fd00::5]"])


@pytest.fixture(scope="module")
def leaf_key():
    return ec.generate_private_key(ec.SECP256R1())


def test_ca_is_a_ca_that_signs_certificates_only(open_ca):
    constraints = _extension(open_ca.certificate, x509.BasicConstraints)
    usage = _extension(open_ca.certificate, x509.KeyUsage)

    assert constraints.critical
    assert constraints.value.ca
    assert constraints.value.path_length == 0
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert not usage.value.digital_signature


def test_ca_validity(open_ca):
    now = datetime.datetime.now(datetime.timezone.utc)
    not_after = certificates.not_valid_after(open_ca.certificate)

    assert now + datetime.timedelta(days=4 * 365) < not_after
    assert not_after < now + datetime.timedelta(days=6 * 365)


def test_open_ca_has_no_name_constraints(open_ca):
    with pytest.raises(x509.ExtensionNotFound):
        _extension(open_ca.certificate, x509.NameConstraints)
    assert certificates.ca_permits(open_ca, "anything.example")


def test_ca_name_constraints_permit_configured_hosts(constrained_ca):
    constraints = _extension(constrained_ca.certificate, x509.NameConstraints)

    assert constraints.critical
    assert set(constraints.value.permitted_subtrees) == {
        x509.DNSName("registry.example.org"),
        x509.IPAddress(ipaddress.ip_network("10.0.0.5/32")),
        x509.IPAddress(ipaddress.ip_network("fd00::5/128")),
    }
    assert constraints.value.excluded_subtrees is None


@pytest.mark.parametrize("host, permitted", [
    ("registry.example.org", True),
    ("REGISTRY.example.org", True),
    ("eu.registry.example.org", True),
    ("example.org", False),
    ("evilregistry.example.org", False),
    ("10.0.0.5", True),
    ("10.0.0.6", False),
    ("[fd00::5]", True),
    ("fd00::6", False),
])
def test_ca_permits(constrained_ca, host, permitted):
    assert certificates.ca_permits(constrained_ca, host) is permitted


@pytest.mark.parametrize("host, expected", [
    ("registry.example.org", x509.DNSName("registry.example.org")),
    ("Registry.Example.org", x509.DNSName("registry.example.org")),
    ("10.0.0.5", x509.IPAddress(ipaddress.ip_address("10.0.0.5"))),
    ("[fd00::5]", x509.IPAddress(ipaddress.ip_address("fd00::5"))),
    ("fd00::5", x509.IPAddress(ipaddress.ip_address("fd00::5"))),
])
def test_leaf_san_is_exactly_the_host(open_ca, leaf_key, host, expected):
    leaf = certificates.build_leaf(open_ca, host, leaf_key)
    names = _extension(leaf, x509.SubjectAlternativeName).value

    assert list(names) == [expected]


def test_leaf_is_a_server_certificate(open_ca, leaf_key):
    leaf = certificates.build_leaf(open_ca, "registry.example.org", leaf_key)

    assert leaf.issuer == open_ca.certificate.subject
    assert not _extension(leaf, x509.BasicConstraints).value.ca
    assert _extension(leaf, x509.KeyUsage).value.digital_signature
    assert not _extension(leaf, x509.KeyUsage).value.key_cert_sign
    assert list(_extension(leaf, x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH]
    ca_key_id = _extension(open_ca.certificate, x509.SubjectKeyIdentifier).value.digest
    assert _extension(leaf, x509.AuthorityKeyIdentifier).value.key_identifier == ca_key_id


def test_leaf_validity_is_short_and_within_the_ca(open_ca, leaf_key):
    now = datetime.datetime.now(datetime.timezone.utc)
    leaf = certificates.build_leaf(open_ca, "registry.example.org", leaf_key)
    late = certificates.build_leaf(open_ca, "registry.example.org", leaf_key,
                                   now=now + datetime.timedelta(days=5 * 365 - 2))

    assert certificates.not_valid_after(leaf) <= now + certificates.LEAF_VALIDITY
    assert certificates.not_valid_after(late) == certificates.not_valid_after(open_ca.certificate)


def test_write_ca_file_modes(tmp_path, open_ca):
    key_path, cert_path = certificates.write_ca(open_ca, tmp_path / "ca")

    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert_path.stat().st_mode) == 0o644
    assert [path.name for path in sorted((tmp_path / "ca").iterdir())] == ["ca.crt", "ca.key"]


def test_write_ca_keeps_existing_ca_without_force(tmp_path, open_ca, constrained_ca):
    certificates.write_ca(open_ca, tmp_path)

    with pytest.raises(ConfigError, match="--force"):
        certificates.write_ca(constrained_ca, tmp_path)

    assert certificates.load_ca(tmp_path).certificate == open_ca.certificate


def test_write_ca_force_replaces(tmp_path, open_ca, constrained_ca):
    certificates.write_ca(open_ca, tmp_path)
    certificates.write_ca(constrained_ca, tmp_path, force=True)

    assert certificates.load_ca(tmp_path).certificate == constrained_ca.certificate
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600


def test_load_ca_missing(tmp_path):
    with pytest.raises(ConfigError, match="registry-p2p agent ca --dir"):
        certificates.load_ca(tmp_path)


def test_load_ca_rejects_readable_key(tmp_path, open_ca):
    key_path, _ = certificates.write_ca(open_ca, tmp_path)
    key_path.chmod(0o644)

    with pytest.raises(ConfigError, match="chmod 600"):
        certificates.load_ca(tmp_path)


def test_load_ca_rejects_certificate_of_other_key(tmp_path, open_ca, constrained_ca):
    certificates.write_ca(open_ca, tmp_path)
    (tmp_path / "ca.crt").write_bytes(
        constrained_ca.certificate.public_bytes(serialization.Encoding.PEM))

    with pytest.raises(ConfigError, match="does not belong"):
        certificates.load_ca(tmp_path)


def _handshake(server_context, client_ca, server_hostname):
    """Run a TLS handshake over a socket pair; return the server's certificate as the client saw it."""
    server_socket, client_socket = socket.socketpair()
    server_errors = []

    def serve():
        try:
            with server_context.wrap_socket(server_socket, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError) as exc:
            server_errors.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    client_context = ssl.create_default_context(cadata=_pem(client_ca.certificate))
    try:
        with client_context.wrap_socket(client_socket, server_hostname=server_hostname) as tls:
            peer = tls.getpeercert()
            tls.sendall(b"x")
    finally:
        client_socket.close()
        thread.join()

    return peer


@pytest.mark.parametrize("host", ["registry.example.org", "10.0.0.5", "[fd00::5]"])
def test_client_verifies_leaf(constrained_ca, host):
    contexts = certificates.LeafContexts(constrained_ca)

    peer = _handshake(contexts.context_for(host), constrained_ca, host.strip("[]"))

    assert peer["subjectAltName"]


def test_client_rejects_leaf_for_other_name(open_ca):
    contexts = certificates.LeafContexts(open_ca)

    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(contexts.context_for("registry.example.org"), open_ca, "other.example.org")


def test_client_enforces_name_constraints(constrained_ca, leaf_key, tmp_path):
    """A leaf that the CA signs for a host outside its constraints fails verification."""
    leaf = certificates.build_leaf(constrained_ca, "outside.example.org", leaf_key)
    chain = tmp_path / "chain.pem"
    key = tmp_path / "key.pem"
    chain.write_text(_pem(leaf) + _pem(constrained_ca.certificate))
    key.write_bytes(leaf_key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain, key)

    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(context, constrained_ca, "outside.example.org")


def test_leaf_contexts_are_cached(open_ca):
    contexts = certificates.LeafContexts(open_ca)

    first = contexts.context_for("registry.example.org")

    assert contexts.context_for("registry.example.org") is first
    assert contexts.context_for("10.0.0.5") is not first


def test_installed_ca_paths():
    assert [str(path) for path in certificates.installed_ca_paths(["r.example.org:5000"])] == [
        "/etc/docker/certs.d/r.example.org:5000/ca.crt"]


@pytest.mark.parametrize("age", [datetime.timedelta(days=6 * 365),
                                 certificates.CA_VALIDITY - datetime.timedelta(hours=2)],
                         ids=["expired", "expires within a day"])
def test_ca_near_its_end_is_refused(tmp_path, age):
    now = datetime.datetime.now(datetime.timezone.utc) - age
    certificates.write_ca(certificates.build_ca("test CA", now=now), tmp_path)

    with pytest.raises(ConfigError, match="agent ca --force"):
        certificates.load_ca(tmp_path)
