"""Byte sizes ("1GiB", "20MiB", "500MB") and link rates ("50Mbit") written on the command line."""

import argparse
import decimal
import re

UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000 ** 2,
    "gb": 1000 ** 3,
    "tb": 1000 ** 4,
    "kib": 1024,
    "mib": 1024 ** 2,
    "gib": 1024 ** 3,
    "tib": 1024 ** 4,
}

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", re.IGNORECASE)

_BINARY_NAMES = (("TiB", 1024 ** 4), ("GiB", 1024 ** 3), ("MiB", 1024 ** 2), ("KiB", 1024))


def parse_size(text):
    """Return the number of bytes in ``text``, such as "1GiB", "20MiB", "1.5GB" or "4096".

    Units are B, KB, MB, GB, TB (powers of 1000) and KiB, MiB, GiB, TiB
    (powers of 1024), in any letter case. Raises ValueError for other units,
    for sizes below one byte and for fractions of a byte.
    """
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f"invalid size {text!r}: expected a number and a unit, such as 1GiB or 20MiB")

    number, unit = match.groups()
    multiplier = UNITS.get(unit.lower())
    if multiplier is None:
        raise ValueError(f"invalid size {text!r}: unknown unit {unit!r}. "
                         f"Use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB")

    size = decimal.Decimal(number) * multiplier
    if size != size.to_integral_value():
        raise ValueError(f"invalid size {text!r}: not a whole number of bytes")
    if size < 1:
        raise ValueError(f"invalid size {text!r}: must be at least 1 byte")

    return int(size)


def format_size(size):
    """Return ``size`` in the largest binary unit that divides it, such as "20 MiB", else in bytes."""
    for name, multiplier in _BINARY_NAMES:
        if size >= multiplier and size % multiplier == 0:
            return f"{size // multiplier} {name}"

    return f"{size} B"


RATE_UNITS = {"bit": 1, "kbit": 1000, "mbit": 1000 ** 2, "gbit": 1000 ** 3}


def parse_rate(text):
    """Return the bits per second in ``text``, such as "50Mbit", "1Gbit" or "50Mbit/s".

    Units are bit, kbit, Mbit and Gbit (powers of 1000), in any letter case,
    with or without "/s". Raises ValueError for other units and for rates
    below 1 bit/s.
    """
    match = _SIZE.fullmatch(text.removesuffix("/s"))
    if match is None:
        raise ValueError(f"invalid rate {text!r}: expected a number and a unit, such as 50Mbit")

    number, unit = match.groups()
    multiplier = RATE_UNITS.get(unit.lower())
    if multiplier is None:
        raise ValueError(f"invalid rate {text!r}: unknown unit {unit!r}. Use bit, kbit, Mbit or Gbit")

    rate = decimal.Decimal(number) * multiplier
    if rate < 1:
        raise ValueError(f"invalid rate {text!r}: must be at least 1 bit/s")

    return int(rate)


def size_argument(text):
    """Parse a size for argparse, which reports the ValueError's message as a usage error."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def rate_argument(text):
    """Parse a link rate for argparse, which reports the ValueError's message as a usage error."""
    try:
        return parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
