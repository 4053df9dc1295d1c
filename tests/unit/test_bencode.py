"""Unit tests of registry_p2p.bencode: round trips, canonical form, malformed input."""

import pytest

from registry_p2p.bencode import BencodeError, bdecode, bencode
from registry_p2p.errors import RegistryP2PError

ROUND_TRIP_VALUES = [
    pytest.param(0, id="zero"),
    pytest.param(-1, id="negative"),
    pytest.param(2**70, id="big-int"),
    pytest.param(-(2**70), id="big-negative-int"),
    pytest.param(b"", id="empty-bytes"),
    pytest.param(bytes(range(256)), id="all-byte-values"),
    pytest.param(b"e" * 1000, id="long-bytes"),
    pytest.param([], id="empty-list"),
    pytest.param({}, id="empty-dict"),
    pytest.param([1, b"a", [b"b", []], {b"c": 2}], id="nested-list"),
    pytest.param({b"a": {b"b": [1, -2]}, b"c": b"", b"\xff": 0}, id="nested-dict"),
]


@pytest.mark.parametrize("value", ROUND_TRIP_VALUES)
def test_round_trip(value):
    assert bdecode(bencode(value)) == value


@pytest.mark.parametrize("value, encoded", [
    pytest.param(3, b"i3e", id="int"),
    pytest.param(-3, b"i-3e", id="negative-int"),
    pytest.param(0, b"i0e", id="zero"),
    pytest.param(b"spam", b"4:spam", id="bytes"),
    pytest.param("spam", b"4:spam", id="str"),
    pytest.param("\u00e9", b"2:\xc3\xa9", id="str-as-utf8"),
    pytest.param(bytearray(b"ab"), b"2:ab", id="bytearray"),
    pytest.param([b"spam", b"eggs"], b"l4:spam4:eggse", id="list"),
    pytest.param((1, 2), b"li1ei2ee", id="tuple-as-list"),
    pytest.param({"cow": "moo", "spam": "eggs"}, b"d3:cow3:moo4:spam4:eggse", id="dict"),
])
def test_encode_known_bytes(value, encoded):
    assert bencode(value) == encoded


def test_encode_sorts_keys_as_raw_bytes():
    # Sorting the encoded keys ("1:z" < "2:ab") or ignoring case would give
    # another order; BEP 3 sorts the raw strings.
    value = {b"z": 1, b"ab": 2, b"B": 3, b"a\x00": 4, b"a": 5}

    assert bencode(value) == b"d1:Bi3e1:ai5e2:a\x00i4e2:abi2e1:zi1ee"


def test_encode_ignores_insertion_order():
    forward = {b"a": 1, b"b": 2, b"c": 3}
    backward = {b"c": 3, b"b": 2, b"a": 1}

    assert bencode(forward) == bencode(backward)


def test_encode_sorts_mixed_str_and_bytes_keys():
    assert bencode({"b": 1, b"a": 2, "\u00e9": 3}) == b"d1:ai2e1:bi1e2:\xc3\xa9i3ee"


@pytest.mark.parametrize("value", [
    pytest.param(True, id="bool"),
    pytest.param(1.5, id="float"),
    pytest.param(None, id="none"),
    pytest.param({1: 2}, id="int-dict-key"),
    pytest.param({(b"a",): 1}, id="tuple-dict-key"),
    pytest.param([{b"a": set()}], id="nested-set"),
])
def test_encode_rejects_unsupported_type(value):
    with pytest.raises(TypeError):
        bencode(value)


def test_encode_rejects_colliding_str_and_bytes_keys():
    with pytest.raises(ValueError):
        bencode({"a": 1, b"a": 2})


@pytest.mark.parametrize("data, value", [
    pytest.param(b"i0e", 0, id="zero"),
    pytest.param(b"i-42e", -42, id="negative"),
    pytest.param(b"0:", b"", id="empty-string"),
    pytest.param(b"3:a:e", b"a:e", id="string-with-delimiters"),
    pytest.param(b"d1:ad1:bleee", {b"a": {b"b": []}}, id="nested"),
])
def test_decode_known_bytes(data, value):
    assert bdecode(data) == value


def test_decode_returns_bytes_keys_and_strings():
    decoded = bdecode(b"d4:name5:valuee")

    assert decoded == {b"name": b"value"}


MALFORMED = [
    pytest.param(b"", id="empty"),
    pytest.param(b"i12", id="truncated-int"),
    pytest.param(b"4:spa", id="truncated-string"),
    pytest.param(b"10:abc", id="string-longer-than-input"),
    pytest.param(b"99999999999999999999:", id="huge-string-length"),
    pytest.param(b"4", id="truncated-string-length"),
    pytest.param(b"l", id="unterminated-list"),
    pytest.param(b"li1e", id="truncated-list"),
    pytest.param(b"d", id="unterminated-dict"),
    pytest.param(b"d1:a", id="dict-key-without-value"),
    pytest.param(b"d1:ai1e", id="truncated-dict"),
    pytest.param(b"d1:ae", id="dict-value-missing"),
    pytest.param(b"i1ei2e", id="trailing-int"),
    pytest.param(b"4:spamx", id="trailing-byte"),
    pytest.param(b"lee", id="trailing-end"),
    pytest.param(b"de\n", id="trailing-newline"),
    pytest.param(b"i01e", id="int-leading-zero"),
    pytest.param(b"i-01e", id="negative-int-leading-zero"),
    pytest.param(b"i00e", id="int-double-zero"),
    pytest.param(b"i-0e", id="negative-zero"),
    pytest.param(b"ie", id="int-without-digits"),
    pytest.param(b"i-e", id="int-only-minus"),
    pytest.param(b"i+1e", id="int-plus-sign"),
    pytest.param(b"i 1e", id="int-space"),
    pytest.param(b"i1.5e", id="int-fraction"),
    pytest.param(b"01:a", id="string-length-leading-zero"),
    pytest.param(b"-1:a", id="negative-string-length"),
    pytest.param(b"d1:bi1e1:ai2ee", id="unsorted-keys"),
    pytest.param(b"d1:ai1e1:ai2ee", id="duplicate-keys"),
    pytest.param(b"d2:abi1e1:ai2ee", id="keys-sorted-by-length"),
    pytest.param(b"di1ei2ee", id="int-dict-key"),
    pytest.param(b"dli1eei2ee", id="list-dict-key"),
    pytest.param(b"dde1:ae", id="dict-dict-key"),
    pytest.param(b"x", id="unknown-type"),
    pytest.param(b"e", id="lone-end"),
]


@pytest.mark.parametrize("data", MALFORMED)
def test_decode_rejects_malformed(data):
    with pytest.raises(BencodeError):
        bdecode(data)


def test_decode_deep_list_nesting():
    depth = 100_000

    with pytest.raises(BencodeError):
        bdecode(b"l" * depth + b"e" * depth)


def test_decode_deep_dict_nesting():
    depth = 100_000

    with pytest.raises(BencodeError):
        bdecode(b"d1:a" * depth + b"i0e" + b"e" * depth)


def test_decode_moderate_nesting():
    depth = 100
    expected = []
    for _ in range(depth - 1):
        expected = [expected]

    assert bdecode(b"l" * depth + b"e" * depth) == expected


def test_error_is_project_error():
    assert issubclass(BencodeError, RegistryP2PError)
