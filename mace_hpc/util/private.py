"""Private directories and trusted files on a shared scratch (invariant 6 of docs/architecture.md).

Scratch roots are often one world-writable (1777) directory for every user. Anything we find
there that we did not make could be a trap: a context directory pre-created by another user (who
then reads or swaps what we write), a symlink planted where our database goes, a record file
whose command we would run. So directories we use must be ours and writable by no one else, and
files we read commands or settings from must be ours and writable by no one else.
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

from ..errors import InputError


def _owner(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _problem(st: os.stat_result, kind: str) -> str | None:
    if stat.S_ISLNK(st.st_mode):
        return "is a symlink"
    if kind == "dir" and not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if kind == "file" and not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_uid != os.geteuid():
        return f"is owned by {_owner(st.st_uid)}, not by you"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"is writable by other users (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def check_private(path: str | os.PathLike[str], what: str, kind: str = "dir") -> Path:
    """Refuse (one-line InputError) a `path` that another user made or can change."""
    path = Path(path)
    problem = _problem(os.lstat(path), kind)
    if problem:
        raise InputError(
            f"{what} {path} {problem}; refusing to use it (on a shared scratch another user could have "
            "planted it): remove it or choose another scratch_root / archive_dir"
        )
    return path


def ensure_private_dir(path: str | os.PathLike[str], what: str, *, parents: bool = False) -> Path:
    """`path` as a directory only we can write: created 0700 when missing, checked when it exists."""
    path = Path(path)
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
        return path
    except FileExistsError:
        return check_private(path, what)


def is_private_file(path: str | os.PathLike[str]) -> bool:
    """Is `path` a regular file of ours that no one else can write (and not a symlink)?"""
    try:
        return _problem(os.lstat(path), "file") is None
    except OSError:
        return False
