"""TLS of the sidecar's HTTPS server, and the CAs that libtorrent trusts for https trackers."""

import logging
import os
import ssl
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from registry_p2p.errors import ConfigError

log = logging.getLogger(__name__)

# The OpenSSL environment variable that replaces the default CA file. libtorrent
# 2.0.8 (Debian bookworm) and 2.1.1 (PyPI, with OpenSSL 3.5 linked in) load
# OpenSSL's default verify paths for https trackers, and have no API to
# give them a CA file.
OPENSSL_CA_FILE_VARIABLE = "SSL_CERT_FILE"
# Name of the CA file written for libtorrent in the process's cache_dir.
TRACKER_CA_FILE_NAME = "https-trackers-ca.pem"


def check_server_tls(config):
    """Raise ConfigError unless the sidecar's tls_certificate, tls_key and public_url fit together.

    Both files or neither must be set. When set, both must be readable PEM
    files, the key must belong to the certificate, and public_url must be
    https://, because agents announce to ``<public_url>/announce`` and
    must reach this server over TLS. Without them, public_url must be
    http://.
    """
    source = config.source
    certificate_path = config["tls_certificate"]
    key_path = config["tls_key"]
    public_url = config["public_url"]
    scheme = urlsplit(public_url).scheme

    if bool(certificate_path) != bool(key_path):
        missing, present = ("tls_key", "tls_certificate") if certificate_path else \
            ("tls_certificate", "tls_key")
        raise ConfigError(f"config file {source}: {present!r} is set but {missing!r} is "
                          f"empty; set both to serve HTTPS, or neither to serve plain HTTP")

    if not certificate_path:
        if scheme != "http":
            raise ConfigError(f"config file {source}: key 'public_url' has value "
                              f"{public_url!r}, but the sidecar serves plain HTTP because "
                              f"tls_certificate and tls_key are empty; set them, or use an "
                              f"http:// public_url")
        return

    if scheme != "https":
        raise ConfigError(f"config file {source}: key 'public_url' has value {public_url!r}, "
                          f"but the sidecar serves HTTPS because tls_certificate is set; "
                          f"use an https:// public_url, since agents announce to "
                          f"<public_url>/announce")

    certificate = _load_certificate(source, certificate_path)
    private_key = _load_private_key(source, key_path)
    if _public_key_bytes(certificate.public_key()) != _public_key_bytes(private_key.public_key()):
        raise ConfigError(f"config file {source}: key 'tls_key': the private key in {key_path} "
                          f"does not match the certificate in {certificate_path} "
                          f"(tls_certificate); set tls_key to the key of that certificate")

    # gunicorn loads the pair with the ssl module, which also rejects what
    # cryptography accepts but OpenSSL's server side does not.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certificate_path, key_path)
    except ssl.SSLError as exc:
        raise ConfigError(f"config file {source}: keys 'tls_certificate' and 'tls_key': "
                          f"OpenSSL cannot load {certificate_path} with {key_path}: "
                          f"{exc}") from None


def _read(source, key, path):
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"config file {source}: key {key!r}: cannot read {path}: "
                          f"{exc.strerror}") from None


def _load_certificate(source, path):
    data = _read(source, "tls_certificate", path)
    try:
        # The first certificate is the server's, and intermediate CA
        # certificates may follow it in the same file.
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise ConfigError(f"config file {source}: key 'tls_certificate': {path} contains "
                          f"no PEM certificate: {exc}") from None


def _load_private_key(source, path):
    data = _read(source, "tls_key", path)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(f"config file {source}: key 'tls_key': the private key in {path} is "
                          f"encrypted, and gunicorn cannot ask for its password; store it "
                          f"unencrypted, readable by the service user only") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"config file {source}: key 'tls_key': {path} is not a PEM private "
                          f"key: {exc}") from None


def _public_key_bytes(public_key):
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def trust_for_https_trackers(ca_bundles, directory):
    """Make this process's libtorrent sessions verify https trackers against ``ca_bundles`` too.

    Writes the system's CAs and every bundle into one PEM file in
    ``directory`` and points SSL_CERT_FILE at it, so call this before the
    libtorrent session is created. Does nothing without bundles, which
    leaves libtorrent on OpenSSL's defaults. Returns the file's path or
    None.

    NOTE: libtorrent has one trust store per process, so every tracker is
    verified against the union of the bundles, not only against the
    bundle of its own registry.
    """
    bundles = list(dict.fromkeys(str(bundle) for bundle in ca_bundles if bundle))
    if not bundles:
        return None

    parts = []
    system_ca_file = ssl.get_default_verify_paths().cafile
    if system_ca_file:
        parts.append(Path(system_ca_file).read_bytes())
    else:
        log.warning("no system CA file found; https trackers are verified against %s only",
                    ", ".join(bundles))
    for bundle in bundles:
        try:
            parts.append(Path(bundle).read_bytes())
        except OSError as exc:
            raise ConfigError(f"cannot read CA bundle {bundle}: {exc.strerror}") from None

    path = Path(directory) / TRACKER_CA_FILE_NAME
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(b"\n".join(part.rstrip(b"\n") + b"\n" for part in parts))
    os.replace(partial, path)
    os.environ[OPENSSL_CA_FILE_VARIABLE] = str(path)
    log.info("https trackers are verified against the system's CAs and %s (%s)",
             ", ".join(bundles), path)

    return path
