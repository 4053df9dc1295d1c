"""Read a secret option's value from a file, as systemd credentials and
Kubernetes or Docker secrets provide it.

The file must be a regular file that only its owner can read or write:
a password that other local users can read, or replace, is not secret.
"""

import os
import stat

from registry_p2p.errors import ConfigError

# Permission bits that let the group or other users read or write the file.
_SHARED_BITS = stat.S_IRGRP | stat.S_IWGRP | stat.S_IROTH | stat.S_IWOTH


def read_secret_file(path, key):
    """Return the text of the secret file ``path`` without one trailing newline.

    ``key`` is the config key that names the file, for the error messages.
    Raises ConfigError when the file is missing, unreadable, not a regular
    file, readable or writable by group or others, or not UTF-8. The file's
    content never appears in a message.
    """
    # O_NONBLOCK keeps open() from waiting for a writer when the path is a
    # FIFO; the fstat below then rejects it. Checking the opened descriptor,
    # not the path, leaves no gap in which the file could be swapped.
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise ConfigError(f"secret file {path} of {key} not found; create it with mode 0600 "
                          f"or 0400, or set {key} to another file") from None
    except OSError as exc:
        raise ConfigError(f"cannot open secret file {path} of {key}: {exc.strerror}") from None

    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise ConfigError(f"secret file {path} of {key} is not a regular file; point "
                              f"{key} at a file")
        if status.st_mode & _SHARED_BITS:
            raise ConfigError(
                f"secret file {path} of {key} is readable or writable by group or others "
                f"(mode {stat.S_IMODE(status.st_mode):04o}); run chmod 600 {path}")

        content = _read_all(descriptor)
    except OSError as exc:
        raise ConfigError(f"cannot read secret file {path} of {key}: {exc.strerror}") from None
    finally:
        os.close(descriptor)

    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"secret file {path} of {key} is not UTF-8 text") from None

    return _strip_one_newline(text)


def _read_all(descriptor):
    chunks = []
    while chunk := os.read(descriptor, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _strip_one_newline(text):
    """Remove the newline that editors and ``echo`` add, and only that one."""
    if text.endswith("\r\n"):
        return text[:-2]
    if text.endswith("\n"):
        return text[:-1]
    return text
