"""Directories we are told to work in (the scratch root): absolute, normalised, and usable.

A scratch root that is a file, a device (`/dev/null`), a dangling symlink or a kernel directory
(`/proc/1`) used to surface as FileExistsError/PermissionError tracebacks deep inside submission,
merge or cleanup; checking it once where it is resolved gives one line naming the setting instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError


def absolute(path: str | os.PathLike[str]) -> Path:
    """`path` made absolute with a leading `//` collapsed to `/`.

    POSIX lets `//x` differ from `/x` and Python keeps it, but Linux treats them alike, while a
    `file://x/...` URI built from it would name the host `x`.
    """
    text = os.path.abspath(os.fspath(path))
    if text.startswith("//"):
        text = "/" + text.lstrip("/")
    return Path(text)


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path("/")


def usable_directory(path: str | os.PathLike[str], setting: str, source: str | None = None) -> Path:
    """`path` as an absolute directory we can create things in, or ConfigError naming `setting`.

    The directory need not exist yet (it is created on first use), but its nearest existing
    ancestor must then be a writable directory. `source` says where the value came from.
    """
    path = absolute(path)
    found = _nearest_existing(path)
    fix = f"{f' (from {source})' if source else ''}; set {setting} to a writable directory"
    if os.path.islink(found) and not os.path.exists(found):
        raise ConfigError(f"{setting}: {found} is a dangling symlink to {os.readlink(found)}{fix}")
    if not os.path.isdir(found):
        what = "a file" if os.path.isfile(found) else "a device or special file"
        raise ConfigError(f"{setting}: {found} is {what}, not a directory{fix}")
    if not os.access(found, os.W_OK | os.X_OK):
        raise ConfigError(f"{setting}: {found} is not a directory we can write to{fix}")
    return path
