"""The commented example configs in etc/ list every option with its current default."""

from pathlib import Path

import pytest

from registry_p2p import config

ETC = Path(__file__).resolve().parents[2] / "etc"


@pytest.mark.parametrize("process, options", [
    ("sidecar", config.SIDECAR_OPTIONS),
    ("agent", config.AGENT_OPTIONS),
])
def test_example_config_is_current(process, options):
    expected = config.example_config(options, f"registry-p2p {process} configuration")

    assert (ETC / f"{process}.toml").read_text() == expected, \
        f"regenerate with: registry-p2p example-config {process} > etc/{process}.toml"
