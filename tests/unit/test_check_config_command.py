"""``registry-p2p check-config``: the shipped examples pass, and broken configs are rejected.

A rejection names the file, the key and the reason. A sidecar config is also
checked as far as its storage driver.
"""

import os
from pathlib import Path

import pytest

from registry_p2p.cli import main

ETC = Path(__file__).resolve().parents[2] / "etc"

SWIFT = '[storage]\ndriver = "swift"\n[storage.swift]\nusername = "a:b"\npassword = "x"\n'

REGISTRY = '[[registries]]\nname = "r.example.org"\nurl = "https://r.example.org"\n'


def check(path, *process):
    return main(["check-config", *process, str(path)])


@pytest.mark.parametrize("process", ["sidecar", "agent"])
def test_shipped_example_passes(capfd, process):
    path = ETC / f"{process}.toml"

    assert check(path, process) == 0
    assert f"{path}: valid {process} configuration" in capfd.readouterr().out


@pytest.mark.parametrize("process", ["sidecar", "agent"])
def test_shipped_example_passes_unnamed(capfd, process):
    assert check(ETC / f"{process}.toml") == 0
    assert f"valid {process} configuration" in capfd.readouterr().out


@pytest.mark.parametrize("process, text, parts", [
    ("sidecar", "workers = 4\nlisten_port = 5050\n", ["unknown key 'listen_port'"]),
    ("sidecar", "[storage]\ndriver = \"filesystem\"\nrootdir = \"/x\"\n",
     ["unknown key 'storage.rootdir'"]),
    ("sidecar", 'workers = "four"\n', ["workers", "'four'"]),
    ("sidecar", "workers = 0\n", ["workers", "0"]),
    ("sidecar", 'registry_url = "ftp://registry.example.org"\n', ["registry_url"]),
    ("sidecar", 'listen = "5050"\n', ["listen", "'5050'"]),
    ("sidecar", '[tracker]\npeer_selection = "nearest"\n', ["tracker.peer_selection"]),
    ("sidecar", '[storage]\ndriver = "ceph"\n',
     ["storage.driver", "'ceph'", "filesystem, s3, swift, registry"]),
    ("sidecar", '[storage]\ndriver = "s3"\n', ["storage.s3.bucket is empty"]),
    ("sidecar", SWIFT + 'authurl = "http://swift.example.org/auth"\ncontainer = "c"\n',
     ["cannot tell the auth version"]),
    ("sidecar", SWIFT + 'authurl = "http://swift.example.org/auth/v1.0"\n',
     ["storage.swift.container is empty"]),
    ("sidecar", "workers = 4\n[storage\n", ["not valid TOML"]),
    ("agent", "threads = 8\n", ["no [[registries]] configured"]),
    ("agent", '[[registries]]\nname = "r.example.org"\n', ["registries[0]: url is missing"]),
    ("agent", REGISTRY + "stall_timeout = 5\n", ["unknown key"]),
    ("agent", REGISTRY.replace("https://r.example.org", "r.example.org"),
     ["registries[0].url", "expected an http:// or https:// URL"]),
    ("agent", 'default_registry = "other.example.org"\n' + REGISTRY, ["other.example.org"]),
    ("agent", '[proxy]\nother_hosts = "allow"\n' + REGISTRY, ["proxy.other_hosts", "'allow'"]),
], ids=["unknown top-level key", "unknown nested key", "wrong type", "out of range",
        "bad url scheme", "listen without host", "unknown choice", "unknown storage driver",
        "s3 without bucket", "swift without auth version", "swift without container",
        "broken toml", "agent without registries", "registry without url",
        "registry table unknown key", "registry url without scheme",
        "default registry not configured", "agent unknown choice"])
def test_broken_config_rejected(tmp_path, capfd, process, text, parts):
    path = tmp_path / f"{process}.toml"
    path.write_text(text)

    status = check(path, process)

    error = capfd.readouterr().err
    assert status != 0
    assert error.startswith("registry-p2p: error: ")
    assert "Traceback" not in error
    for part in parts:
        assert part in error


def test_error_names_the_file(tmp_path, capfd):
    path = tmp_path / "sidecar.toml"
    path.write_text('workers = "four"\n')

    check(path, "sidecar")

    assert str(path) in capfd.readouterr().err


def test_missing_file_rejected(tmp_path, capfd):
    path = tmp_path / "absent.toml"

    assert check(path, "sidecar") != 0
    assert f"cannot read config file {path}" in capfd.readouterr().err


def test_shared_secret_file_rejected(tmp_path, capfd):
    secret = tmp_path / "notifications.secret"
    secret.write_text("hunter2-do-not-print\n")
    os.chmod(secret, 0o644)
    path = tmp_path / "sidecar.toml"
    path.write_text('[notifications]\nsecret_file = "notifications.secret"\n')

    status = check(path, "sidecar")

    error = capfd.readouterr().err
    assert status != 0
    assert "readable or writable by group or others" in error
    assert "hunter2" not in error


def test_sidecar_keys_tell_the_process(tmp_path, capfd):
    path = tmp_path / "site.toml"
    path.write_text('public_url = "http://10.0.0.1:5050"\n')

    assert check(path) == 0
    assert "valid sidecar configuration" in capfd.readouterr().out


def test_agent_keys_tell_the_process(tmp_path, capfd):
    path = tmp_path / "site.toml"
    path.write_text(REGISTRY)

    assert check(path) == 0
    assert "valid agent configuration" in capfd.readouterr().out


def test_ambiguous_file_rejected(tmp_path, capfd):
    path = tmp_path / "site.toml"
    path.write_text('log_level = "debug"\n')

    assert check(path) != 0
    assert "cannot tell whether" in capfd.readouterr().err


def test_complete_swift_storage_passes(tmp_path, capfd):
    path = tmp_path / "sidecar.toml"
    path.write_text(SWIFT + 'authurl = "http://swift.example.org/auth/v1.0"\ncontainer = "c"\n')

    assert check(path, "sidecar") == 0
    assert "valid sidecar configuration" in capfd.readouterr().out


def test_url_password_not_shown(tmp_path, capfd):
    path = tmp_path / "sidecar.toml"
    path.write_text('registry_url = "ftp://admin:TOPSECRET@registry.example.org"\n')

    assert check(path, "sidecar") != 0
    error = capfd.readouterr().err
    assert "TOPSECRET" not in error
    assert "ftp://admin:***@registry.example.org" in error


@pytest.mark.parametrize("process, settings, parts", [
    ("sidecar", "connections_limt = 5", ["torrent.settings.connections_limt", "no setting"]),
    ("agent", 'connections_limit = "many"', ["torrent.settings.connections_limit",
                                            "expected an integer", "'many'"]),
    ("agent", "enable_dht = 1", ["torrent.settings.enable_dht", "expected true or false"]),
], ids=["unknown name", "string for integer", "integer for boolean"])
def test_bad_libtorrent_setting_rejected(tmp_path, capfd, process, settings, parts):
    path = tmp_path / f"{process}.toml"
    path.write_text(f"[torrent.settings]\n{settings}\n" + (REGISTRY if process == "agent" else ""))

    status = check(path, process)

    error = capfd.readouterr().err
    assert status != 0
    assert "Traceback" not in error
    for part in parts:
        assert part in error
