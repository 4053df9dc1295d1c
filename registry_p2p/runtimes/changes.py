"""Planned file contents: showing them as a unified diff and writing them in place."""

import difflib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from registry_p2p.errors import RegistryP2PError

log = logging.getLogger(__name__)

NEW_FILE_MODE = 0o644
NEW_DIRECTORY_MODE = 0o755


class ConfigureError(RegistryP2PError):
    """A runtime's configuration cannot be read or merged, so nothing is written."""


@dataclass(frozen=True)
class FileChange:
    """The new text of one file; ``old`` is its current text, or None when it does not exist."""

    path: Path
    old: str | None
    new: str

    @property
    def changed(self):
        return self.old != self.new

    def diff(self):
        """Return the change as a unified diff (empty when nothing changes)."""
        old_label = str(self.path) if self.old is not None else "/dev/null"
        lines = difflib.unified_diff(
            (self.old or "").splitlines(keepends=True), self.new.splitlines(keepends=True),
            fromfile=old_label, tofile=str(self.path))

        return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
                       for line in lines)


def rooted(root, path):
    """Return absolute ``path`` (such as /etc/docker/daemon.json) below directory ``root``."""
    relative = PurePosixPath(path).relative_to("/")
    return Path(root) / relative


def read_text(path):
    """Return the text of ``path``, or None when it does not exist."""
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigureError(f"cannot read {path}: {exc}") from None


def write(change):
    """Replace the file with its new text atomically, keeping the mode of an existing file.

    NOTE: a symbolic link at the path is replaced by a regular file, not
    followed, because following it could leave the --root directory.
    """
    path = change.path
    _make_directories(path.parent)
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = NEW_FILE_MODE

    try:
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as exc:
        raise ConfigureError(f"cannot write in {path.parent}: {exc.strerror}") from None

    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(change.new)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise ConfigureError(f"cannot write {path}: {exc.strerror}") from None

    log.info("wrote %s", path)


def _make_directories(directory):
    try:
        directory.mkdir(mode=NEW_DIRECTORY_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigureError(f"cannot create directory {directory}: {exc.strerror}") from None
