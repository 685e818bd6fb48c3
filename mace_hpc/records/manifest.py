"""The manifest of a submission: array index -> workflow id -> context directory, plus the policies.

Written once by `mace-submit` (atomically, before any job is queued) and read by every element,
the epilogue, `mace status` and `mace merge`: the one contract between submission and the rest.
`elements.json` beside it holds each element's resolved spec (steps, env, materials).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..util.atomic import atomic_write_bytes, atomic_write_json, read_bytes, read_json
from ..util.private import is_private_file
from ._io import RecordError, read_versioned
from .layout import ELEMENT_FILE

if TYPE_CHECKING:
    from .stages import Stage

VERSION = 1
_FIX = "submit the plan again (mace-submit PLAN)"


@dataclass(frozen=True)
class ManifestEntry:
    """One element of the manifest: its index, workflow id and context directory."""

    index: int
    workflow_id: str
    context_dir: str

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "workflow_id": self.workflow_id, "context_dir": self.context_dir}


@dataclass(frozen=True)
class Manifest:
    """A submission's manifest.json: the plan's settings and its elements (one entry each)."""

    plan: str
    isolation_mode: str
    scratch_root: str
    shared_database: str
    archive_dir: str
    on_complete: str = "merge"
    on_failure: str = "keep"
    plan_dir: str = ""
    elements: tuple[ManifestEntry, ...] = field(default_factory=tuple)
    stages: tuple[Stage, ...] = ()  # empty: a single-stage plan

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "manifest") -> Manifest:
        try:
            entries = tuple(
                ManifestEntry(int(e["index"]), str(e["workflow_id"]), str(e["context_dir"])) for e in data["elements"]
            )
            return cls(
                plan=str(data["plan"]), isolation_mode=str(data.get("isolation_mode") or "isolated"),
                scratch_root=str(data.get("scratch_root") or ""), shared_database=str(data.get("shared_database") or ""),
                archive_dir=str(data.get("archive_dir") or ""), on_complete=str(data.get("on_complete") or "merge"),
                on_failure=str(data.get("on_failure") or "keep"), plan_dir=str(data.get("plan_dir") or ""),
                elements=entries, stages=_stages_from(data.get("stages")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RecordError(f"{where}: not a mace-hpc manifest ({type(exc).__name__}: {exc}); {_FIX}") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": VERSION, "plan": self.plan, "isolation_mode": self.isolation_mode,
            "scratch_root": self.scratch_root, "shared_database": self.shared_database,
            "archive_dir": self.archive_dir, "on_complete": self.on_complete, "on_failure": self.on_failure,
            "plan_dir": self.plan_dir, "elements": [e.to_dict() for e in self.elements],
            **({"stages": [s.to_dict() for s in self.stages]} if self.stages else {}),
        }

    def entry(self, index: int, where: str = "manifest") -> ManifestEntry:
        """Element `index`; RecordError when the plan has no such element."""
        if 0 <= index < len(self.elements) and self.elements[index].index == index:
            return self.elements[index]
        for e in self.elements:  # a manifest read for one element (`load_manifest_for`) holds only it
            if e.index == index:
                return e
        raise RecordError(f"{where}: no element with index {index} (the plan has {len(self.elements)})")

    def entry_for_context(self, context_dir: Path) -> ManifestEntry | None:
        """The entry of a context directory; by workflow id when the scratch root was moved since."""
        wanted = str(context_dir)
        for e in self.elements:
            if e.context_dir == wanted:
                return e
        for e in self.elements:
            if e.workflow_id == context_dir.name:
                return ManifestEntry(e.index, e.workflow_id, wanted)
        return None


def _stages_from(data: Any) -> tuple[Stage, ...]:
    if not data:
        return ()  # a single-stage plan: its runner never loads the stage model
    from .stages import stages_from  # lazy: only a multi-stage plan's manifest has stages

    return stages_from(data)


def load_manifest_for(path: str | os.PathLike[str], index: int) -> Manifest:
    """The manifest at `path` holding only element `index`'s entry: what one element's runner needs,
    read without parsing every other element's (~25 ms per element at 10,000; `write_manifest`
    puts the header on the first line and one entry per line). Falls back to the whole file when it
    is laid out otherwise (an older mace-hpc wrote it) or the line is not that element's."""
    lines = _lines(path, index, is_manifest=True)
    if lines is not None:
        try:
            head, entry = json.loads(lines[0] + b"]}"), _item(lines, index)
            if isinstance(head, dict) and isinstance(entry, dict) and entry.get("index") == index \
                    and isinstance(head.get("version", 1), int) and head.get("version", 1) <= VERSION:
                return Manifest.from_dict({**head, "elements": [entry]}, str(path))
        except ValueError:
            pass
    return load_manifest(path)


def _lines(path: str | os.PathLike[str], upto: int, is_manifest: bool = False) -> list[bytes] | None:
    """The head and the first `upto + 1` item lines of a file `_one_per_line` wrote (the rest in one
    last piece); None when it is not such a file (missing, not private, laid out otherwise)."""
    if not is_private_file(path):
        return None
    try:
        data = read_bytes(path)
    except OSError:
        return None
    opener, closer = (b'"elements": [', b"\n]}\n") if is_manifest else (b"[", b"\n]\n")
    lines = data.split(b"\n", max(0, upto) + 2)
    return lines if len(lines) > 1 and lines[0].endswith(opener) and data.endswith(closer) else None


def load_manifest(path: str | os.PathLike[str]) -> Manifest:
    """The manifest at `path`; RecordError (exit 2, one line) when missing, truncated or foreign."""
    return Manifest.from_dict(read_versioned(path, "manifest", VERSION, _FIX), str(path))


def read_manifest(path: str | os.PathLike[str]) -> Manifest | None:
    """Like `load_manifest`, None instead of an error (hooks and searches that try several places)."""
    try:
        return load_manifest(path)
    except RecordError:
        return None


def write_manifest(path: str | os.PathLike[str], manifest: Manifest) -> None:
    """One JSON object: the header on the first line, then one element entry per line, so one
    element's runner reads its own entry only (`load_manifest_for`)."""
    data = manifest.to_dict()
    entries = data.pop("elements")
    head = json.dumps(data, sort_keys=True, default=str)[:-1] + (', "elements": [' if data else '"elements": [')
    atomic_write_bytes(path, _one_per_line(head, entries, "]}"))


def _one_per_line(head: str, items: list[Any], tail: str) -> bytes:
    """`head`, one item per line (a comma ending all but the last), `tail` on a line of its own."""
    encode = json.JSONEncoder(sort_keys=True, default=str).encode  # one encoder, not one per item (10,000)
    body = "".join(f"{encode(item)},\n" for item in items)
    return f"{head}\n{body[:-2]}\n{tail}\n".encode() if items else f"{head}\n{tail}\n".encode()


def _item(lines: list[bytes], i: int) -> Any:
    """Item `i` of a file `_one_per_line` wrote (lines: head, items..., tail); ValueError if absent."""
    if not 0 <= i < len(lines) - 2 or lines[i + 1] in (b"]", b"]}"):
        raise ValueError(f"no item {i}")
    line = lines[i + 1]
    return json.loads(line[:-1] if line.endswith(b",") else line)


def load_element_spec(elements_path: str | os.PathLike[str], index: int) -> dict[str, Any]:
    """Element `index`'s resolved spec from `elements.json` (steps, env, materials)."""
    if os.path.lexists(elements_path) and not is_private_file(elements_path):
        raise RecordError(f"{elements_path}: not a regular file of yours that only you can write; refusing to run "
                          "the steps it lists (another user could have written it)")
    lines = _lines(elements_path, index)  # one element per line: parse only this one
    if lines is not None:
        try:
            spec = _item(lines, index)
            if isinstance(spec, dict):
                return spec
        except ValueError:
            pass
    elements = read_json(elements_path)
    if not isinstance(elements, list) or not 0 <= index < len(elements) or not isinstance(elements[index], dict):
        raise RecordError(f"{elements_path}: missing, truncated or without element {index}; {_FIX}")
    return elements[index]


def read_element_specs(elements_path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every element's spec in index order, for readers that only show them (`mace report`);
    [] when the file is missing or truncated, {} for an entry that is not a mapping."""
    elements = read_json(elements_path)
    return [e if isinstance(e, dict) else {} for e in elements] if isinstance(elements, list) else []


def write_element_specs(elements_path: str | os.PathLike[str], specs: list[dict[str, Any]]) -> None:
    """A JSON list, one element per line (`load_element_spec` parses only the one it needs)."""
    atomic_write_bytes(elements_path, _one_per_line("[", specs, "]"), fsync=False)


def write_element_copy(context_dir: str | os.PathLike[str], spec: Mapping[str, Any], plan: str) -> None:
    """`<context>/element.json`: the element's spec and its plan's name, kept with the context so a
    hook that only knows the context finds its submission again."""
    atomic_write_json(Path(context_dir) / ELEMENT_FILE, {**spec, "plan": plan})


def plan_of_context(context_dir: str | os.PathLike[str]) -> str | None:
    """The plan a context was submitted by (from its element.json), when it is a safe name."""
    element = read_json(Path(context_dir) / ELEMENT_FILE)
    plan = element.get("plan") if isinstance(element, dict) else None
    if not isinstance(plan, str) or not plan or "/" in plan or plan.startswith("."):
        return None
    return plan
