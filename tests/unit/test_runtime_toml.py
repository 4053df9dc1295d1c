"""The TOML writer for runtime settings: what it writes, tomllib reads back equal."""

import math
import tomllib

import pytest

from registry_p2p.runtimes.toml_text import render_document, render_table, toml_string, toml_value


@pytest.mark.parametrize("text", [
    "plain",
    "",
    'quote " and backslash \\',
    "tab\tnew line\ncarriage return\r",
    "control \x01 \x1f \x7f",
    "unicode é ✓",
    "http://127.0.0.1:5080",
])
def test_string_reads_back(text):
    assert tomllib.loads(f"key = {toml_string(text)}")["key"] == text


@pytest.mark.parametrize("value", [True, False, 0, -7, 2 ** 40, 1.5, ["pull", "resolve"], [],
                                   [1, [2, 3]], {"a": 1, "b c": "d"}])
def test_value_reads_back(value):
    assert tomllib.loads(f"key = {toml_value(value)}")["key"] == value


def test_special_floats_read_back():
    parsed = tomllib.loads(f"a = {toml_value(math.inf)}\nb = {toml_value(math.nan)}")

    assert parsed["a"] == math.inf
    assert math.isnan(parsed["b"])


def test_unsupported_value_rejected():
    with pytest.raises(ValueError, match="cannot write"):
        toml_value(object())


def test_document_reads_back():
    document = {
        "server": "https://registry.example.org",
        "skip_verify": False,
        "host": {
            "http://127.0.0.1:5080": {"capabilities": ["pull", "resolve"],
                                      "header": {"x-a": ["1"]}},
            "https://mirror.example.org": {"capabilities": ["pull"]},
        },
        "registry": [{"location": "a", "mirror": [{"location": "m1"}, {"location": "m2"}]},
                     {"location": "b"}],
    }

    text = render_document(document, indent="  ")

    assert tomllib.loads(text) == document
    assert list(tomllib.loads(text)["host"]) == list(document["host"])


def test_table_header_quotes_keys():
    lines = render_table(("host", "http://127.0.0.1:5080"), {"capabilities": ["pull"]}, "  ")

    assert lines == ['[host."http://127.0.0.1:5080"]', '  capabilities = ["pull"]']
