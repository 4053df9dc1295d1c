"""``registry-p2p check-config``: a sidecar config is checked as far as its storage driver."""

import pytest

from registry_p2p.cli import main

SWIFT = '[storage]\ndriver = "swift"\n[storage.swift]\nusername = "a:b"\npassword = "x"\n'


@pytest.mark.parametrize("text, message", [
    (SWIFT + 'authurl = "http://swift.example.org/auth"\ncontainer = "c"\n',
     "cannot tell the auth version"),
    (SWIFT + 'authurl = "http://swift.example.org/auth/v1.0"\n', "storage.swift.container is empty"),
    ('[storage]\ndriver = "s3"\n', "storage.s3.bucket is empty"),
], ids=["swift without auth version", "swift without container", "s3 without bucket"])
def test_incomplete_storage_is_rejected(tmp_path, capfd, text, message):
    path = tmp_path / "sidecar.toml"
    path.write_text(text)

    status = main(["check-config", "sidecar", str(path)])

    assert status != 0
    assert message in capfd.readouterr().err


def test_complete_swift_storage_passes(tmp_path, capfd):
    path = tmp_path / "sidecar.toml"
    path.write_text(SWIFT + 'authurl = "http://swift.example.org/auth/v1.0"\ncontainer = "c"\n')

    assert main(["check-config", "sidecar", str(path)]) == 0
    assert "valid sidecar configuration" in capfd.readouterr().out
