"""`registry-p2p agent ca`: files, name constraints from a config, and the paths it prints."""

import stat

from cryptography import x509

from registry_p2p import cli
from registry_p2p.agent import certificates

CONFIG = """
[proxy]
ca_dir = "{ca_dir}"

[[registries]]
name = "registry.example.org:5000"
url = "https://registry.example.org:5000"

[[registries]]
name = "10.0.0.5:5000"
url = "http://10.0.0.5:5000"
"""


def test_ca_without_config(tmp_path, capfd):
    assert cli.main(["agent", "ca", "--dir", str(tmp_path / "ca")]) == 0

    output = capfd.readouterr().out
    ca = certificates.load_ca(tmp_path / "ca")
    assert certificates.permitted_hosts(ca) is None
    assert stat.S_IMODE((tmp_path / "ca" / "ca.key").stat().st_mode) == 0o600
    assert "/etc/docker/certs.d/<registry host[:port]>/ca.crt" in output
    assert f'ca_dir = "{tmp_path / "ca"}"' in output


def test_ca_from_config_constrains_names(tmp_path, capfd):
    config_path = tmp_path / "agent.toml"
    config_path.write_text(CONFIG.format(ca_dir=tmp_path / "ca"))

    assert cli.main(["agent", "ca", "-c", str(config_path)]) == 0

    output = capfd.readouterr().out
    ca = certificates.load_ca(tmp_path / "ca")
    # Only the https registry: the http one is never intercepted.
    assert certificates.permitted_hosts(ca) == ["registry.example.org"]
    assert "/etc/docker/certs.d/registry.example.org:5000/ca.crt" in output
    assert "10.0.0.5" not in output
    assert "ca_dir =" not in output


def test_ca_keeps_existing_without_force(tmp_path, capfd):
    assert cli.main(["agent", "ca", "--dir", str(tmp_path)]) == 0
    first = (tmp_path / "ca.crt").read_bytes()

    assert cli.main(["agent", "ca", "--dir", str(tmp_path)]) == 2
    assert "--force" in capfd.readouterr().err
    assert (tmp_path / "ca.crt").read_bytes() == first

    assert cli.main(["agent", "ca", "--dir", str(tmp_path), "--force"]) == 0
    assert (tmp_path / "ca.crt").read_bytes() != first
    assert isinstance(x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes()),
                      x509.Certificate)


def test_ca_from_config_without_https_registry_rejected(tmp_path, capfd):
    config_path = tmp_path / "agent.toml"
    config_path.write_text('[[registries]]\nname = "10.0.0.5:5000"\nurl = "http://10.0.0.5:5000"\n')

    status = cli.main(["agent", "ca", "-c", str(config_path), "--dir", str(tmp_path / "ca")])

    assert status == 2
    assert "lists no registry with an https url" in capfd.readouterr().err
    assert not (tmp_path / "ca").exists()
