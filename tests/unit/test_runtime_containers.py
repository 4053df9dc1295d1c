"""registries.conf drop-in: the agent as first mirror with the registry in its path, earlier tables carried over."""

import tomllib

import pytest

from registry_p2p.config import Registry
from registry_p2p.runtimes.changes import ConfigureError
from registry_p2p.runtimes.containers import mirror_location, plan, registry_entry

AGENT = "127.0.0.1:5080"
REGISTRY = Registry(name="registry.example.org", url="https://registry.example.org", sidecars=())
LOCAL = Registry(name="localhost:5000", url="http://localhost:5000", sidecars=())


def _drop_in(root):
    return root / "etc/containers/registries.conf.d/registry-p2p.conf"


@pytest.mark.parametrize("name, location", [
    ("registry.example.org", "127.0.0.1:5080/registry.example.org"),
    ("localhost:5000", "127.0.0.1:5080/localhost_5000"),
])
def test_mirror_location(name, location):
    assert mirror_location(AGENT, name) == location


def test_mirror_location_rejects_ipv6_name():
    with pytest.raises(ConfigureError, match="IPv6"):
        mirror_location(AGENT, "[fd00::1]:5000")


def test_new_entry_for_http_registry():
    assert registry_entry(LOCAL, AGENT) == {
        "location": "localhost:5000",
        "insecure": True,
        "mirror": [{"location": "127.0.0.1:5080/localhost_5000", "insecure": True}],
    }


def test_new_entry_for_https_registry():
    assert registry_entry(REGISTRY, AGENT) == {
        "location": "registry.example.org",
        "mirror": [{"location": "127.0.0.1:5080/registry.example.org", "insecure": True}],
    }


def test_earlier_entry_keeps_its_settings():
    earlier = {"prefix": "registry.example.org", "location": "registry.example.org",
               "mirror-by-digest-only": False,
               "mirror": [{"location": "mirror.example.org"},
                          {"location": "127.0.0.1:5080/registry.example.org/"}]}

    entry = registry_entry(REGISTRY, AGENT, earlier)

    assert entry["prefix"] == "registry.example.org"
    assert entry["mirror-by-digest-only"] is False
    assert entry["mirror"] == [{"location": "127.0.0.1:5080/registry.example.org", "insecure": True},
                               {"location": "mirror.example.org"}]


def test_plan_renders_all_registries(tmp_path):
    (change,), warnings = plan([REGISTRY, LOCAL], AGENT, tmp_path, "/etc/registry-p2p/agent.toml")
    parsed = tomllib.loads(change.new)

    assert change.path == _drop_in(tmp_path)
    assert change.old is None
    assert warnings == []
    assert [entry["location"] for entry in parsed["registry"]] == ["registry.example.org",
                                                                   "localhost:5000"]
    assert parsed["registry"][1]["mirror"][0]["location"] == "127.0.0.1:5080/localhost_5000"


def test_plan_carries_main_file_table_and_warns(tmp_path):
    main = tmp_path / "etc/containers/registries.conf"
    main.parent.mkdir(parents=True)
    main.write_text('unqualified-search-registries = ["docker.io"]\n\n'
                    '[[registry]]\nlocation = "localhost:5000"\ninsecure = true\nblocked = false\n\n'
                    '[[registry.mirror]]\nlocation = "mirror.local:5000"\n')

    (change,), warnings = plan([LOCAL], AGENT, tmp_path, "agent.toml")
    entry = tomllib.loads(change.new)["registry"][0]

    assert entry["blocked"] is False
    assert [mirror["location"] for mirror in entry["mirror"]] == [
        "127.0.0.1:5080/localhost_5000", "mirror.local:5000"]
    assert len(warnings) == 1
    assert str(main) in warnings[0]
    assert "replaces" in warnings[0]


def test_plan_warns_about_later_drop_in(tmp_path):
    later = tmp_path / "etc/containers/registries.conf.d/zz-local.conf"
    later.parent.mkdir(parents=True)
    later.write_text('[[registry]]\nprefix = "localhost:5000"\nlocation = "localhost:5000"\n')

    _, warnings = plan([LOCAL], AGENT, tmp_path, "agent.toml")

    assert len(warnings) == 1
    assert "ignore the agent" in warnings[0]


def test_plan_rejects_invalid_main_file(tmp_path):
    main = tmp_path / "etc/containers/registries.conf"
    main.parent.mkdir(parents=True)
    main.write_text("[[registry]\n")

    with pytest.raises(ConfigureError, match="is not valid TOML"):
        plan([LOCAL], AGENT, tmp_path, "agent.toml")


def test_plan_is_idempotent(tmp_path):
    (first,), _ = plan([REGISTRY, LOCAL], AGENT, tmp_path, "agent.toml")
    first.path.parent.mkdir(parents=True)
    first.path.write_text(first.new)

    (second,), _ = plan([REGISTRY, LOCAL], AGENT, tmp_path, "agent.toml")

    assert not second.changed
