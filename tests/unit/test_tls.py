"""The sidecar's HTTPS settings, their checks, and the CA file that libtorrent trusts."""

import os
import ssl
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from registry_p2p import config, tls
from registry_p2p.agent.main import new_http_session
from registry_p2p.cli import main
from registry_p2p.errors import ConfigError
from registry_p2p.sandbox.tls import make_server_certificate
from registry_p2p.server import gunicorn_options


@pytest.fixture(scope="module")
def server_files(tmp_path_factory):
    return make_server_certificate(tmp_path_factory.mktemp("tls"), "127.0.0.1")


@pytest.fixture(scope="module")
def other_files(tmp_path_factory):
    return make_server_certificate(tmp_path_factory.mktemp("other-tls"), "127.0.0.1")


def load_sidecar(tmp_path, text):
    path = tmp_path / "sidecar.toml"
    path.write_text(text)
    return config.load(config.SIDECAR_OPTIONS, path)


def tls_text(certificate, key, public_url="https://127.0.0.1:5050"):
    return (f'public_url = "{public_url}"\ntls_certificate = "{certificate}"\n'
            f'tls_key = "{key}"\n')


def check_error(tmp_path, text):
    loaded = load_sidecar(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        tls.check_server_tls(loaded)
    return str(error.value)


def test_matching_pair_passes(tmp_path, server_files):
    loaded = load_sidecar(tmp_path, tls_text(server_files.certificate_path,
                                             server_files.key_path))

    tls.check_server_tls(loaded)


def test_plain_http_default_passes():
    tls.check_server_tls(config.load(config.SIDECAR_OPTIONS))


def test_mismatched_key_rejected(tmp_path, server_files, other_files):
    message = check_error(tmp_path, tls_text(server_files.certificate_path,
                                             other_files.key_path))

    assert "'tls_key'" in message
    assert "does not match" in message
    assert str(other_files.key_path) in message
    assert str(server_files.certificate_path) in message
    assert str(tmp_path / "sidecar.toml") in message


def test_missing_certificate_file_rejected(tmp_path, server_files):
    missing = tmp_path / "absent.crt"

    message = check_error(tmp_path, tls_text(missing, server_files.key_path))

    assert "'tls_certificate'" in message
    assert f"cannot read {missing}" in message
    assert "No such file" in message


def test_unreadable_key_rejected(tmp_path, server_files):
    key_dir = tmp_path / "keys"
    key_dir.mkdir()

    message = check_error(tmp_path, tls_text(server_files.certificate_path, key_dir))

    assert "'tls_key'" in message
    assert f"cannot read {key_dir}" in message


@pytest.mark.parametrize("present, missing", [
    ("tls_certificate", "tls_key"),
    ("tls_key", "tls_certificate"),
])
def test_only_one_of_pair_rejected(tmp_path, server_files, present, missing):
    paths = {"tls_certificate": server_files.certificate_path, "tls_key": server_files.key_path}

    message = check_error(tmp_path, f'public_url = "https://127.0.0.1:5050"\n'
                                    f'{present} = "{paths[present]}"\n')

    assert f"{present!r} is set but {missing!r} is empty" in message


def test_http_public_url_with_tls_rejected(tmp_path, server_files):
    message = check_error(tmp_path, tls_text(server_files.certificate_path,
                                             server_files.key_path,
                                             public_url="http://127.0.0.1:5050"))

    assert "'public_url'" in message
    assert "https://" in message
    assert "'http://127.0.0.1:5050'" in message


def test_https_public_url_without_tls_rejected(tmp_path):
    message = check_error(tmp_path, 'public_url = "https://127.0.0.1:5050"\n')

    assert "'public_url'" in message
    assert "serves plain HTTP" in message


def test_key_as_certificate_rejected(tmp_path, server_files):
    message = check_error(tmp_path, tls_text(server_files.key_path, server_files.key_path))

    assert "'tls_certificate'" in message
    assert "PEM certificate" in message


def test_encrypted_key_rejected(tmp_path, server_files):
    key = serialization.load_pem_private_key(server_files.key_path.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase")))

    message = check_error(tmp_path, tls_text(server_files.certificate_path, encrypted))

    assert "'tls_key'" in message
    assert "encrypted" in message


def test_relative_paths_follow_config_file(tmp_path, server_files):
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    (config_dir / "server.crt").write_bytes(server_files.certificate_path.read_bytes())
    (config_dir / "server.key").write_bytes(server_files.key_path.read_bytes())

    loaded = load_sidecar(config_dir, tls_text("server.crt", "server.key"))

    assert loaded["tls_certificate"] == str(config_dir / "server.crt")
    assert loaded["tls_key"] == str(config_dir / "server.key")
    tls.check_server_tls(loaded)


def test_relative_tracker_ca_bundle_follows_config_file(tmp_path, server_files):
    (tmp_path / "ca.crt").write_bytes(server_files.ca_path.read_bytes())

    loaded = load_sidecar(tmp_path, 'tracker_ca_bundle = "ca.crt"\n')

    assert loaded["tracker_ca_bundle"] == str(tmp_path / "ca.crt")


def test_check_config_reports_mismatch(tmp_path, capfd, server_files, other_files):
    path = tmp_path / "sidecar.toml"
    path.write_text(tls_text(server_files.certificate_path, other_files.key_path))

    status = main(["check-config", "sidecar", str(path)])

    assert status != 0
    assert "does not match" in capfd.readouterr().err


def test_check_config_accepts_pair(tmp_path, capfd, server_files):
    path = tmp_path / "sidecar.toml"
    path.write_text(tls_text(server_files.certificate_path, server_files.key_path))

    assert main(["check-config", "sidecar", str(path)]) == 0
    assert "valid sidecar configuration" in capfd.readouterr().out


@pytest.mark.parametrize("value", ["false", "0"])
def test_tracker_validation_cannot_be_turned_off(value):
    with pytest.raises(ConfigError) as error:
        config.load(config.AGENT_OPTIONS,
                    text=f"[torrent.settings]\nvalidate_https_trackers = {value}\n")

    assert "validate_https_trackers" in str(error.value)
    assert "cannot be turned off" in str(error.value)


def test_gunicorn_serves_https_with_pair():
    options = gunicorn_options(("127.0.0.1", 5050), 2, 4, "info", certificate="/etc/a.crt",
                               key="/etc/a.key")

    assert options["certfile"] == "/etc/a.crt"
    assert options["keyfile"] == "/etc/a.key"


def test_gunicorn_plain_without_pair():
    options = gunicorn_options(("127.0.0.1", 5050), 2, 4, "info")

    assert "certfile" not in options
    assert "keyfile" not in options


@pytest.fixture
def restore_ca_variable():
    saved = os.environ.get(tls.OPENSSL_CA_FILE_VARIABLE)
    yield
    if saved is None:
        os.environ.pop(tls.OPENSSL_CA_FILE_VARIABLE, None)
    else:
        os.environ[tls.OPENSSL_CA_FILE_VARIABLE] = saved


def test_tracker_ca_file_joins_system_and_bundles(tmp_path, server_files, other_files,
                                                  restore_ca_variable):
    path = tls.trust_for_https_trackers(
        [str(server_files.ca_path), "", str(other_files.ca_path), str(server_files.ca_path)],
        tmp_path)

    text = path.read_bytes()
    system_ca_file = ssl.get_default_verify_paths().cafile
    assert os.environ[tls.OPENSSL_CA_FILE_VARIABLE] == str(path)
    assert text.count(server_files.ca_path.read_bytes().strip()) == 1
    assert other_files.ca_path.read_bytes().strip() in text
    assert system_ca_file, "this machine needs a system CA file (Debian: ca-certificates)"
    assert Path(system_ca_file).read_bytes().strip() in text


def test_tracker_ca_file_verifies_server(tmp_path, server_files, restore_ca_variable):
    path = tls.trust_for_https_trackers([server_files.ca_path], tmp_path)

    context = ssl.create_default_context(cafile=str(path))
    stats = context.cert_store_stats()
    assert stats["x509_ca"] >= 1


def test_no_bundles_leaves_defaults(tmp_path, restore_ca_variable):
    os.environ.pop(tls.OPENSSL_CA_FILE_VARIABLE, None)

    assert tls.trust_for_https_trackers(["", ""], tmp_path) is None
    assert tls.OPENSSL_CA_FILE_VARIABLE not in os.environ
    assert list(tmp_path.iterdir()) == []


def test_agent_sidecars_use_registry_bundle(tmp_path, server_files):
    loaded = config.load(config.AGENT_OPTIONS, text=(
        '[[registries]]\nname = "registry.example.org"\n'
        'url = "https://registry.example.org"\n'
        'sidecars = ["https://sidecar-1.example.org:5050", "http://sidecar-2.example.org:5050"]\n'
        f'ca_bundle = "{server_files.ca_path}"\n'
        '[[registries]]\nname = "other.example.org"\nurl = "https://other.example.org"\n'
        'sidecars = ["https://sidecar.other.example.org:5050"]\n'))

    http = new_http_session(loaded)

    bundle = str(server_files.ca_path)
    metainfo = "/p2p/v1/app/blobs/sha256:00/torrent"
    assert http.get_adapter("https://registry.example.org/v2/").ca_bundle == bundle
    assert http.get_adapter("https://sidecar-1.example.org:5050" + metainfo).ca_bundle == bundle
    assert not hasattr(http.get_adapter("https://sidecar.other.example.org:5050" + metainfo),
                       "ca_bundle")


def test_private_key_type_mismatch_rejected(tmp_path, server_files):
    other_key = ec.generate_private_key(ec.SECP384R1())
    key_path = tmp_path / "p384.key"
    key_path.write_bytes(other_key.private_bytes(serialization.Encoding.PEM,
                                                 serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))

    message = check_error(tmp_path, tls_text(server_files.certificate_path, key_path))

    assert "does not match" in message
