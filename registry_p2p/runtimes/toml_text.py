"""Rendering of the small TOML documents that runtime configuration needs.

tomllib only reads TOML, and the files written here hold strings, booleans,
numbers, arrays and tables, so a writer of that subset is enough. Dates and
times are not supported.
"""

import math
import re

_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+\Z")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
            "\r": "\\r"}


def toml_string(text):
    """Return ``text`` as a TOML basic string."""
    escaped = []
    for character in text:
        if character in _ESCAPES:
            escaped.append(_ESCAPES[character])
        elif ord(character) < 0x20 or ord(character) == 0x7F:
            escaped.append(f"\\u{ord(character):04x}")
        else:
            escaped.append(character)

    return '"' + "".join(escaped) + '"'


def toml_key(key):
    """Return ``key`` bare when TOML allows it, else quoted."""
    return key if _BARE_KEY_RE.match(key) else toml_string(key)


def toml_value(value):
    """Return a scalar, an array or an inline table as TOML.

    Raises ValueError for a value TOML cannot hold or this writer does not
    support, such as a date.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{toml_key(key)} = {toml_value(item)}" for key, item in value.items())
        return "{ " + items + " }" if items else "{}"

    raise ValueError(f"cannot write {type(value).__name__} value {value!r} as TOML")


def _is_table(value):
    return isinstance(value, dict)


def _is_table_array(value):
    return isinstance(value, list) and bool(value) and all(isinstance(item, dict) for item in value)


def render_table(path, mapping, indent="", array=False):
    """Return the lines of table ``path`` (a tuple of keys) with ``mapping`` as its contents.

    Plain keys come first, indented by ``indent``; nested tables and arrays
    of tables follow as their own headers. ``array`` renders the header as
    ``[[...]]``, one element of an array of tables.
    """
    dotted = ".".join(toml_key(key) for key in path)
    lines = [f"[[{dotted}]]" if array else f"[{dotted}]"]
    lines += render_keys(mapping, indent)
    lines += _render_subtables(path, mapping, indent)

    return lines


def render_keys(mapping, indent=""):
    """Return the ``key = value`` lines of the plain (non-table) entries of ``mapping``."""
    return [f"{indent}{toml_key(key)} = {toml_value(value)}" for key, value in mapping.items()
            if not _is_table(value) and not _is_table_array(value)]


def _render_subtables(path, mapping, indent):
    lines = []
    for key, value in mapping.items():
        if _is_table(value):
            lines += ["", *render_table((*path, key), value, indent)]
        elif _is_table_array(value):
            for item in value:
                lines += ["", *render_table((*path, key), item, indent, array=True)]

    return lines


def render_document(mapping, indent=""):
    """Return a whole TOML document for ``mapping``, ending in a newline."""
    lines = render_keys(mapping) + _render_subtables((), mapping, indent)
    if lines and lines[0] == "":
        lines = lines[1:]

    return "\n".join(lines) + "\n"
