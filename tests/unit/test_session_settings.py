"""libtorrent settings that the session starts with."""

import pytest

from registry_p2p.session import TorrentSession


@pytest.mark.parametrize("role", ["A", "S"])
def test_every_tracker_gets_announces(role):
    # A torrent lists each sidecar's tracker in a tier of its own, and the
    # trackers share no state, so a peer must announce to every tier.
    settings = TorrentSession("127.0.0.1", 0, role=role)._settings()

    assert settings["announce_to_all_trackers"] is True
    assert settings["announce_to_all_tiers"] is True
