"""Unit tests of registry_p2p.config: defaults, the example files and validation."""

import os
import tomllib
from pathlib import Path

import pytest

from registry_p2p import config
from registry_p2p.config import AGENT_OPTIONS, SIDECAR_OPTIONS, ConfigError, Registry

OPTION_SETS = [
    pytest.param(SIDECAR_OPTIONS, id="sidecar"),
    pytest.param(AGENT_OPTIONS, id="agent"),
]


def flatten(document, prefix=""):
    """Return the dotted keys of a parsed TOML document; an empty table is a key of its own."""
    keys = set()
    for key, value in document.items():
        if isinstance(value, dict) and value:
            keys |= flatten(value, prefix + key + ".")
        else:
            keys.add(prefix + key)
    return keys


def load_agent(text):
    return config.load(AGENT_OPTIONS, text=text)


def registries_error(text):
    with pytest.raises(ConfigError) as caught:
        load_agent(text)
    return str(caught.value)


# Defaults


@pytest.mark.parametrize("options", OPTION_SETS)
def test_defaults_load(options):
    loaded = config.load(options)

    assert loaded.source == "<defaults>"


@pytest.mark.parametrize("options", OPTION_SETS)
def test_defaults_match_declarations(options):
    loaded = config.load(options)

    for option in options:
        assert loaded[option.key] == option.parse(option.default), option.key


def test_default_cache_dir_is_path():
    assert isinstance(config.load(SIDECAR_OPTIONS)["cache_dir"], Path)


def test_default_timeout_is_float():
    assert isinstance(config.load(SIDECAR_OPTIONS)["upstream_timeout"], float)


def test_default_registries_empty():
    assert config.load(AGENT_OPTIONS)["registries"] == ()


# Example config


@pytest.mark.parametrize("options", OPTION_SETS)
def test_example_lists_every_option(options):
    example = config.example_config(options, "example")
    keys = flatten(tomllib.loads(example))

    assert keys == {option.key for option in options}


def test_example_shows_registries_table():
    example = config.example_config(AGENT_OPTIONS, "agent example")

    assert "[[registries]]" in example.splitlines()


@pytest.mark.parametrize("options", OPTION_SETS)
def test_example_has_help_for_every_option(options):
    example = config.example_config(options, "example")
    comments = [line.removeprefix("# ") for line in example.splitlines() if line.startswith("# ")]
    comment_text = " ".join(" ".join(comments).split())

    for option in options:
        assert " ".join(option.help.split()) in comment_text, option.key


@pytest.mark.parametrize("options", OPTION_SETS)
def test_example_loads_to_defaults(options):
    defaults = config.load(options)
    loaded = config.load(options, text=config.example_config(options, "example"))

    for option in options:
        if option.key != "registries":
            assert loaded[option.key] == defaults[option.key], option.key


def test_example_registry_is_local_sidecar():
    agent = load_agent(config.example_config(AGENT_OPTIONS, "agent example"))
    sidecar = config.load(SIDECAR_OPTIONS)

    assert agent["registries"] == (Registry(
        name="127.0.0.1:5000",
        url=sidecar["registry_url"],
        sidecars=(sidecar["public_url"],),
    ),)


# Validation


def test_config_file_values(tmp_path):
    path = tmp_path / "sidecar.toml"
    path.write_text('workers = 8\n[tracker]\ninterval = 10\n')

    loaded = config.load(SIDECAR_OPTIONS, path)

    assert (loaded["workers"], loaded["tracker.interval"]) == (8, 10)


def test_config_file_source(tmp_path):
    path = tmp_path / "sidecar.toml"
    path.write_text("workers = 8\n")

    assert config.load(SIDECAR_OPTIONS, path).source == str(path)


def test_dotted_key_form():
    loaded = config.load(SIDECAR_OPTIONS, text='tracker.interval = 10\n')

    assert loaded["tracker.interval"] == 10


def test_integer_seconds_become_float():
    loaded = config.load(SIDECAR_OPTIONS, text="upstream_timeout = 5\n")

    assert isinstance(loaded["upstream_timeout"], float)


def test_ipv6_listen():
    loaded = config.load(SIDECAR_OPTIONS, text='listen = "[::1]:5050"\n')

    assert loaded["listen"] == ("::1", 5050)


def test_url_trailing_slash_removed():
    loaded = config.load(SIDECAR_OPTIONS, text='registry_url = "http://127.0.0.1:5000/"\n')

    assert loaded["registry_url"] == "http://127.0.0.1:5000"


@pytest.mark.parametrize("text, key", [
    pytest.param('listne = "127.0.0.1:5050"\n', "'listne'", id="top-level"),
    pytest.param("[tracker]\nintervall = 5\n", "'tracker.intervall'", id="in-table"),
    pytest.param("[tracker.extra]\nx = 1\n", "'tracker.extra.x'", id="nested-table"),
    pytest.param("storage = 1\n", "'storage'", id="table-as-value"),
])
def test_unknown_key_named(text, key):
    with pytest.raises(ConfigError) as caught:
        config.load(SIDECAR_OPTIONS, text=text)

    assert key in str(caught.value)


def test_agent_rejects_sidecar_key():
    with pytest.raises(ConfigError):
        load_agent("workers = 4\n")


@pytest.fixture
def bad_workers_file(tmp_path):
    path = tmp_path / "sidecar.toml"
    path.write_text('workers = "four"\n')
    return path


def test_wrong_type_names_file(bad_workers_file):
    with pytest.raises(ConfigError) as caught:
        config.load(SIDECAR_OPTIONS, bad_workers_file)

    assert str(bad_workers_file) in str(caught.value)


def test_wrong_type_names_key(bad_workers_file):
    with pytest.raises(ConfigError) as caught:
        config.load(SIDECAR_OPTIONS, bad_workers_file)

    assert "'workers'" in str(caught.value)


def test_wrong_type_names_value(bad_workers_file):
    with pytest.raises(ConfigError) as caught:
        config.load(SIDECAR_OPTIONS, bad_workers_file)

    assert "'four'" in str(caught.value)


@pytest.mark.parametrize("text", [
    pytest.param("workers = 0\n", id="zero-workers"),
    pytest.param("workers = true\n", id="bool-workers"),
    pytest.param("workers = 2.5\n", id="float-workers"),
    pytest.param('listen = "5050"\n', id="listen-without-host"),
    pytest.param('listen = "127.0.0.1:99999"\n', id="listen-port-too-large"),
    pytest.param("listen = 5050\n", id="listen-int"),
    pytest.param('registry_url = "ftp://127.0.0.1"\n', id="url-scheme"),
    pytest.param('registry_url = "http://"\n', id="url-without-host"),
    pytest.param('registry_url = "http://127.0.0.1:5000/?x=1"\n', id="url-query"),
    pytest.param('trackers = "http://127.0.0.1:5050/announce"\n', id="trackers-not-list"),
    pytest.param('trackers = ["udp://127.0.0.1:6969"]\n', id="trackers-scheme"),
    pytest.param('cache_dir = ""\n', id="empty-path"),
    pytest.param('log_level = "verbose"\n', id="log-level"),
    pytest.param("upstream_timeout = 0\n", id="zero-timeout"),
    pytest.param("upstream_timeout = -1.5\n", id="negative-timeout"),
    pytest.param('[storage]\ndriver = "s4"\n', id="storage-driver"),
])
def test_invalid_value(text):
    with pytest.raises(ConfigError):
        config.load(SIDECAR_OPTIONS, text=text)


def test_invalid_toml_names_file(tmp_path):
    path = tmp_path / "sidecar.toml"
    path.write_text("workers = = 4\n")

    with pytest.raises(ConfigError) as caught:
        config.load(SIDECAR_OPTIONS, path)

    assert str(path) in str(caught.value)


def test_missing_file_names_file(tmp_path):
    path = tmp_path / "missing.toml"

    with pytest.raises(ConfigError) as caught:
        config.load(SIDECAR_OPTIONS, path)

    assert str(path) in str(caught.value)


def test_replace():
    loaded = config.load(SIDECAR_OPTIONS).replace(tracker__interval=5)

    assert loaded["tracker.interval"] == 5


def test_replace_unknown_key():
    with pytest.raises(KeyError):
        config.load(SIDECAR_OPTIONS).replace(tracker__intervall=5)


# [[registries]]

TWO_REGISTRIES = """
[[registries]]
name = "Registry.Example.org:5000"
url = "https://registry.example.org:5000/"
sidecars = ["http://127.0.0.1:5050", "http://127.0.0.2:5050/"]

[[registries]]
name = "mirror.example.org"
url = "http://mirror.example.org"
"""


def test_registries_parsed():
    loaded = load_agent(TWO_REGISTRIES)

    assert loaded["registries"] == (
        Registry(
            name="registry.example.org:5000",
            url="https://registry.example.org:5000",
            sidecars=("http://127.0.0.1:5050", "http://127.0.0.2:5050"),
        ),
        Registry(name="mirror.example.org", url="http://mirror.example.org", sidecars=()),
    )


def test_registries_with_top_level_keys():
    loaded = load_agent('default_registry = "mirror.example.org"\n' + TWO_REGISTRIES)

    assert loaded["default_registry"] == "mirror.example.org"


def test_registries_duplicate_names():
    text = TWO_REGISTRIES.replace('"mirror.example.org"', '"registry.example.org:5000"', 1)

    assert "unique" in registries_error(text)


def test_registries_duplicate_names_ignore_case():
    text = '''
[[registries]]
name = "registry.example.org"
url = "https://registry.example.org"

[[registries]]
name = "REGISTRY.example.org"
url = "https://registry.example.org"
'''

    assert "unique" in registries_error(text)


def test_registries_missing_url():
    text = '[[registries]]\nname = "registry.example.org"\n'

    assert "registries[0]" in registries_error(text)


def test_registries_missing_name():
    text = '[[registries]]\nurl = "https://registry.example.org"\n'

    assert "registries[0]" in registries_error(text)


def test_registries_unknown_key_named():
    text = TWO_REGISTRIES + 'sidecar = ["http://127.0.0.1:5050"]\n'

    assert "'sidecar'" in registries_error(text)


def test_registries_unknown_key_index():
    text = TWO_REGISTRIES + 'sidecar = ["http://127.0.0.1:5050"]\n'

    assert "registries[1]" in registries_error(text)


@pytest.mark.parametrize("url", [
    "ftp://registry.example.org",
    "registry.example.org",
    "unix:///run/registry.sock",
    "https://registry.example.org/#v2",
])
def test_registries_bad_url(url):
    text = f'[[registries]]\nname = "registry.example.org"\nurl = "{url}"\n'

    assert "registries[0]" in registries_error(text)


def test_registries_bad_sidecar_url():
    text = ('[[registries]]\nname = "registry.example.org"\n'
            'url = "https://registry.example.org"\nsidecars = ["tcp://127.0.0.1:5050"]\n')

    assert "registries[0]" in registries_error(text)


@pytest.mark.parametrize("name", ["", "registry.example.org/library"])
def test_registries_bad_name(name):
    text = f'[[registries]]\nname = "{name}"\nurl = "https://registry.example.org"\n'

    assert "registries[0]" in registries_error(text)


def test_registries_single_table():
    text = '[registries]\nname = "registry.example.org"\nurl = "https://registry.example.org"\n'

    with pytest.raises(ConfigError):
        load_agent(text)


# Secret options from files


def write_secret(path, content, mode=0o600):
    path.write_bytes(content)
    path.chmod(mode)
    return path


def load_sidecar_file(tmp_path, text):
    path = tmp_path / "sidecar.toml"
    path.write_text(text)
    return config.load(SIDECAR_OPTIONS, path)


def secret_error(tmp_path, text):
    with pytest.raises(ConfigError) as caught:
        load_sidecar_file(tmp_path, text)
    return str(caught.value)


def test_secret_options_declared():
    secret_keys = {option.key for option in SIDECAR_OPTIONS if option.secret}

    assert secret_keys == {"storage.swift.password", "storage.s3.secretkey",
                           "storage.registry.password", "notifications.secret"}


def test_secret_read_from_file(tmp_path):
    secret = write_secret(tmp_path / "password", b"s3cr3t\n")

    loaded = load_sidecar_file(tmp_path, f'[storage.swift]\npassword_file = "{secret}"\n')

    assert loaded["storage.swift.password"] == "s3cr3t"


def test_secret_file_dotted_key(tmp_path):
    secret = write_secret(tmp_path / "secretkey", b"key")

    loaded = load_sidecar_file(tmp_path, f'storage.s3.secretkey_file = "{secret}"\n')

    assert loaded["storage.s3.secretkey"] == "key"


@pytest.mark.parametrize("content, expected", [
    pytest.param(b"s3cr3t", "s3cr3t", id="no-newline"),
    pytest.param(b"s3cr3t\n", "s3cr3t", id="one-newline"),
    pytest.param(b"s3cr3t\r\n", "s3cr3t", id="crlf"),
    pytest.param(b"s3cr3t\n\n", "s3cr3t\n", id="two-newlines"),
    pytest.param(b" s3cr3t \n", " s3cr3t ", id="spaces-kept"),
    pytest.param("pässwörd\n".encode(), "pässwörd", id="utf-8"),
])
def test_secret_file_one_newline_stripped(tmp_path, content, expected):
    secret = write_secret(tmp_path / "password", content)

    loaded = load_sidecar_file(tmp_path, f'[storage.swift]\npassword_file = "{secret}"\n')

    assert loaded["storage.swift.password"] == expected


def test_secret_file_relative_to_config(tmp_path):
    write_secret(tmp_path / "password", b"relative\n")

    loaded = load_sidecar_file(tmp_path, '[storage.swift]\npassword_file = "password"\n')

    assert loaded["storage.swift.password"] == "relative"


def test_secret_file_mode_0400(tmp_path):
    secret = write_secret(tmp_path / "password", b"read-only", mode=0o400)

    loaded = load_sidecar_file(tmp_path, f'[storage.swift]\npassword_file = "{secret}"\n')

    assert loaded["storage.swift.password"] == "read-only"


def test_secret_file_through_symlink(tmp_path):
    secret = write_secret(tmp_path / "password", b"linked")
    link = tmp_path / "current"
    link.symlink_to(secret)

    loaded = load_sidecar_file(tmp_path, f'[storage.swift]\npassword_file = "{link}"\n')

    assert loaded["storage.swift.password"] == "linked"


@pytest.mark.parametrize("mode", [0o640, 0o620, 0o604, 0o602, 0o644, 0o666])
def test_secret_file_shared_mode_rejected(tmp_path, mode):
    secret = write_secret(tmp_path / "password", b"s3cr3t", mode=mode)

    message = secret_error(tmp_path, f'[storage.swift]\npassword_file = "{secret}"\n')

    assert str(secret) in message
    assert f"{mode:04o}" in message
    assert "s3cr3t" not in message


def test_secret_file_missing(tmp_path):
    missing = tmp_path / "missing"

    message = secret_error(tmp_path, f'[storage.swift]\npassword_file = "{missing}"\n')

    assert str(missing) in message
    assert "not found" in message


def test_secret_file_directory_rejected(tmp_path):
    directory = tmp_path / "secrets"
    directory.mkdir(mode=0o700)

    message = secret_error(tmp_path, f'[storage.swift]\npassword_file = "{directory}"\n')

    assert str(directory) in message
    assert "not a regular file" in message


def test_secret_file_fifo_rejected(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)

    message = secret_error(tmp_path, f'[storage.swift]\npassword_file = "{fifo}"\n')

    assert "not a regular file" in message


def test_secret_file_not_utf8(tmp_path):
    secret = write_secret(tmp_path / "password", b"\xff\xfe")

    message = secret_error(tmp_path, f'[storage.swift]\npassword_file = "{secret}"\n')

    assert "UTF-8" in message


def test_secret_inline_and_file_rejected(tmp_path):
    secret = write_secret(tmp_path / "password", b"from-file")
    text = f'[storage.swift]\npassword = "inline"\npassword_file = "{secret}"\n'

    message = secret_error(tmp_path, text)

    assert "'storage.swift.password'" in message
    assert "'storage.swift.password_file'" in message


@pytest.mark.parametrize("value", ['""', "42"])
def test_secret_file_key_invalid_value(tmp_path, value):
    message = secret_error(tmp_path, f"[storage.swift]\npassword_file = {value}\n")

    assert "'storage.swift.password_file'" in message


def test_file_key_of_plain_option_unknown(tmp_path):
    message = secret_error(tmp_path, '[storage.swift]\nusername_file = "user"\n')

    assert "'storage.swift.username_file'" in message


def test_invalid_secret_value_not_shown():
    with pytest.raises(ConfigError) as caught:
        config.load(SIDECAR_OPTIONS, text="[storage.swift]\npassword = 987654321\n")

    assert "'storage.swift.password'" in str(caught.value)
    assert "987654321" not in str(caught.value)


def test_example_mentions_secret_file():
    example = config.example_config(SIDECAR_OPTIONS, "example")
    comment_text = " ".join(line.removeprefix("# ") for line in example.splitlines()
                            if line.startswith("# "))

    assert "password_file may name a file" in comment_text
    assert "secretkey_file may name a file" in comment_text


# [torrent.settings]


@pytest.mark.parametrize("options", OPTION_SETS)
def test_torrent_settings_table_is_passed_through(options):
    loaded = config.load(options, text="[torrent.settings]\nconnections_limit = 400\n"
                                       "enable_outgoing_utp = true\n")

    assert loaded["torrent.settings"] == {"connections_limit": 400, "enable_outgoing_utp": True}


@pytest.mark.parametrize("value", ["[1, 2]", "1.5", "{ a = 1 }"])
def test_torrent_settings_reject_other_value_types(value):
    with pytest.raises(config.ConfigError, match="torrent.settings"):
        config.load(AGENT_OPTIONS, text=f"[torrent.settings]\nconnections_limit = {value}\n")


def test_torrent_settings_must_be_a_table():
    with pytest.raises(config.ConfigError, match="expected a table"):
        config.load(AGENT_OPTIONS, text="[torrent]\nsettings = 3\n")
