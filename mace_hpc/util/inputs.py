"""Reading untrusted input files (plans, configuration) with bounds: size, nesting, YAML aliases.

Without them a 700-byte YAML file of nested aliases grows to gigabytes, `/dev/zero` is read
until memory runs out, a FIFO blocks forever, and 500 nested mappings end in a RecursionError
traceback. Every problem is an `InputProblem` (a ValueError) whose text the caller prefixes with
the file name and raises as its own error type (PlanError, ConfigError).
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MAX_FILE_BYTES = 16 << 20  # a plan of 10,000 explicit elements is about 3 MiB
MAX_DEPTH = 100  # plans need about 10 levels; kwargs and metadata get the rest
MAX_ALIAS_VALUES = 1_000_000  # values YAML aliases may add on top of what is written out


class InputProblem(ValueError):
    """What is wrong with an input file, without its name (the caller adds it)."""


# ------------------------------------------------------------------------------------------ files
def read_text_bounded(path: Path, limit: int = MAX_FILE_BYTES) -> str:
    """A regular file's text (UTF-8), at most `limit` bytes; FIFOs and devices are refused unread.

    The file is opened non-blocking (a FIFO would otherwise wait for a writer) and checked with
    fstat on the open descriptor, so it cannot be swapped between the check and the read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(21, "Is a directory", str(path))
        if not stat.S_ISREG(st.st_mode):
            kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(
                st.st_mode) else "a socket or special file"
            raise InputProblem(f"is {kind}, not a regular file; save the content to a file and give that")
        if st.st_size > limit:
            raise InputProblem(_too_big(st.st_size, limit))
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:  # grew since fstat
        raise InputProblem(_too_big(len(data), limit))
    return data.decode("utf-8")


def read_input_text(path: Path, shown: str, error: type[Exception], what: str = "file") -> str:
    """`read_text_bounded` with every problem as one `error` line starting with `shown`."""
    try:
        return read_text_bounded(path)
    except FileNotFoundError:
        raise error(f"{shown}: no such file") from None
    except IsADirectoryError:
        raise error(f"{shown}: is a directory, not a {what}") from None
    except UnicodeDecodeError:
        raise error(f"{shown}: not UTF-8 text") from None
    except InputProblem as exc:
        raise error(f"{shown}: {exc}") from None
    except OSError as exc:
        raise error(f"{shown}: cannot read: {exc.strerror or exc}") from None


def _too_big(size: int, limit: int) -> str:
    return f"is {size:,} bytes; the limit is {limit >> 20} MiB (use a sweep instead of writing every element out)"


# ------------------------------------------------------------------------------------------- JSON
def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads would keep the last of two equal keys silently; a duplicated "steps" is a mistake.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def loads_json(text: str) -> Any:
    """json.loads refusing duplicate keys; nesting too deep for the parser is an InputProblem
    (`check_depth` bounds what the parser accepts, for code that recurses).

    Other problems raise json.JSONDecodeError / ValueError as json.loads does.
    """
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except RecursionError:
        raise InputProblem(f"nested deeper than {MAX_DEPTH} levels") from None


# ------------------------------------------------------------------------------------------- YAML
def _loader() -> type:
    import yaml
    from yaml.constructor import ConstructorError

    class Limit(yaml.MarkedYAMLError):
        """A bound was hit (not a syntax error): reported without "malformed"."""

    class BoundedSafeLoader(yaml.SafeLoader):
        """`yaml.SafeLoader` with a nesting limit, refused duplicate keys and bounded aliases."""

        limit_error = Limit

        def __init__(self, stream: str) -> None:
            super().__init__(stream)
            self._depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                return super().compose_node(parent, index)
            self._depth += 1
            try:
                if self._depth > MAX_DEPTH:
                    raise Limit(None, None, f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

        def get_single_node(self) -> Any:
            node = super().get_single_node()
            if node is not None:
                _check_aliases(node, Limit)
            return node

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *defaults` then an explicit key is an override, not a duplicate
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:
                    continue  # an unhashable key: the base class says so
                if duplicate:
                    raise ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            return super().construct_mapping(node, deep)

    return BoundedSafeLoader


def _check_aliases(root: Any, error: type[Exception]) -> None:
    """Refuse alias cycles and aliases that add more than MAX_ALIAS_VALUES values.

    Counts the values the document has once every alias is written out (a DAG walk, each node
    sized once), without building it.
    """
    sizes: dict[int, int] = {}
    distinct = 0
    stack: list[tuple[Any, bool]] = [(root, False)]
    on_path: set[int] = set()
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            children = _children(node)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise error(None, None, "an alias refers to a value that contains it (a cycle)", node.start_mark)
        on_path.add(key)
        distinct += 1
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)
    extra = sizes[id(root)] - distinct
    if extra > MAX_ALIAS_VALUES:
        raise error(None, None, f"aliases expand to {extra:,} more values; the limit is {MAX_ALIAS_VALUES:,}",
                    root.start_mark)


def _children(node: Any) -> list[Any]:
    value = node.value
    if not isinstance(value, list):
        return []
    if value and isinstance(value[0], tuple):
        return [n for pair in value for n in pair]
    return value


def loads_yaml(text: str) -> Any:
    """`yaml.safe_load` with the limits above.

    A bound hit is an InputProblem (with the position); bad YAML and duplicate keys raise
    yaml.YAMLError as safe_load does.
    """
    import yaml

    loader = _bounded_loader()
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader subclass
    except loader.limit_error as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        raise InputProblem(f"{exc.problem}{where}") from None


_LOADER: type | None = None


def _bounded_loader() -> type:
    global _LOADER
    if _LOADER is None:
        _LOADER = _loader()
    return _LOADER


# ------------------------------------------------------------------------------------------ depth
def check_depth(data: Any, limit: int = MAX_DEPTH) -> None:
    """InputProblem naming where `data` (lists/mappings) nests deeper than `limit`.

    Iterative, so it is safe on any depth; the validators after it recurse and are then safe too.
    """
    # paths are linked (key, parent) pairs: one small tuple per container, built only for containers
    containers = (Mapping, list)
    if not isinstance(data, containers):
        return
    stack: list[tuple[Any, int, Any]] = [(data, 0, None)]
    while stack:
        value, depth, path = stack.pop()
        if depth >= limit:
            raise InputProblem(f"{_show_path(path)}: nested deeper than {limit} levels")
        items = value.items() if isinstance(value, Mapping) else enumerate(value)
        stack.extend((v, depth + 1, (k, path)) for k, v in items if isinstance(v, containers))


def _show_path(path: Any, shown: int = 6) -> str:
    keys: list[Any] = []
    while path is not None:
        keys.append(path[0])
        path = path[1]
    keys.reverse()
    text = ""
    for k in keys[:shown]:
        text += f"[{k}]" if isinstance(k, int) else (f".{k}" if text else str(k))
    return (text or "plan") + ("…" if len(keys) > shown else "")
