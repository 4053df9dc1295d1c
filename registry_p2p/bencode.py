"""Bencoding (BEP 3) of tracker replies and metainfo files.

libtorrent has its own encoder, but the tracker runs in processes that do
not load libtorrent, and metainfo is built here so that its bytes do not
depend on the libtorrent version.
"""

from registry_p2p.errors import RegistryP2PError


class BencodeError(RegistryP2PError):
    """Input is not valid bencoding."""


def bencode(value):
    """Encode ints, bytes, str (as UTF-8), lists and dicts; dict keys are sorted as bytes.

    Raises TypeError for any other type, including a dict key that is not
    str or bytes, and ValueError for a dict whose str and bytes keys collide.
    """
    out = []
    _encode(value, out)

    return b"".join(out)


def _encode(value, out):
    if isinstance(value, bool):
        raise TypeError("bencode has no booleans; use 0 or 1")

    if isinstance(value, int):
        out.append(b"i%de" % value)
    elif isinstance(value, (bytes, bytearray)):
        out.append(b"%d:" % len(value))
        out.append(bytes(value))
    elif isinstance(value, str):
        _encode(value.encode(), out)
    elif isinstance(value, (list, tuple)):
        out.append(b"l")
        for item in value:
            _encode(item, out)
        out.append(b"e")
    elif isinstance(value, dict):
        out.append(b"d")
        keys = {}
        for key in value:
            if isinstance(key, str):
                raw_key = key.encode()
            elif isinstance(key, bytes):
                raw_key = key
            else:
                raise TypeError(f"bencode dict keys must be str or bytes, not {type(key).__name__}")
            if raw_key in keys:
                raise ValueError(f"bencode dict key {raw_key!r} is given both as str and as bytes")
            keys[raw_key] = key
        for raw_key in sorted(keys):
            _encode(raw_key, out)
            _encode(value[keys[raw_key]], out)
        out.append(b"e")
    else:
        raise TypeError(f"cannot bencode {type(value).__name__}")


def bdecode(data):
    """Decode bytes into ints, bytes, lists and dicts with bytes keys.

    Raises BencodeError on truncated input, trailing bytes, leading zeros,
    negative zero or unsorted/duplicate dict keys.
    """
    try:
        value, end = _decode(data, 0)
    except RecursionError:
        raise BencodeError("nesting too deep") from None

    if end != len(data):
        raise BencodeError(f"trailing data at offset {end}")

    return value


def _decode(data, pos):
    if pos >= len(data):
        raise BencodeError("truncated input")

    lead = data[pos:pos + 1]
    if lead == b"i":
        end = data.find(b"e", pos)
        if end < 0:
            raise BencodeError(f"unterminated integer at offset {pos}")
        digits = data[pos + 1:end]
        if not _canonical_int(digits):
            raise BencodeError(f"invalid integer {digits!r} at offset {pos}")
        return int(digits), end + 1

    if lead == b"l":
        items = []
        pos += 1
        while data[pos:pos + 1] != b"e":
            item, pos = _decode(data, pos)
            items.append(item)
        return items, pos + 1

    if lead == b"d":
        result = {}
        previous = None
        pos += 1
        while data[pos:pos + 1] != b"e":
            key, pos = _decode(data, pos)
            if not isinstance(key, bytes):
                raise BencodeError(f"dict key is not a string at offset {pos}")
            if previous is not None and key <= previous:
                raise BencodeError(f"dict keys unsorted or duplicated at {key!r}")
            result[key], pos = _decode(data, pos)
            previous = key
        return result, pos + 1

    if lead.isdigit():
        colon = data.find(b":", pos)
        if colon < 0:
            raise BencodeError(f"unterminated string length at offset {pos}")
        digits = data[pos:colon]
        if not _canonical_int(digits) or digits.startswith(b"-"):
            raise BencodeError(f"invalid string length {digits!r} at offset {pos}")
        end = colon + 1 + int(digits)
        if end > len(data):
            raise BencodeError("truncated string")
        return data[colon + 1:end], end

    raise BencodeError(f"unexpected byte {lead!r} at offset {pos}")


def _canonical_int(digits):
    if digits in (b"0",):
        return True

    body = digits[1:] if digits.startswith(b"-") else digits

    return body.isdigit() and not body.startswith(b"0")
