"""Where archives go and come back from: a directory or an `s3://bucket/prefix`, one interface.

Every caller (the epilogue's archive policies, `mace merge`, `mace cleanup`, `mace contexts
archive|restore`, `mace resubmit`) goes through these functions, so a site switching
`archive_dir` to an object store changes nothing else:

- `archive_to`: build the archive (`archive.archive_context`, in a temp dir under the scratch root
  for an object store), upload it (`objectstore.ObjectStore.put_archive`: in parts, verified
  size + SHA-256), record it in the plan's manifest object; an `ArchiveRecord` says where it is
  and its SHA-256. Any failure is an OSError (StorageError for the store) with the context
  untouched, which the epilogue turns into PENDING_MERGE for `mace merge` to retry.
- `archive_intact`: may the context be removed? (local file + sidecar; object size + SHA-256)
- `restore_from`: a path, an `s3://` URL or a workflow id; downloaded copies are checked against
  the object's SHA-256, the plan manifest's and the tombstone's, then extracted through the same
  safety filter as a local archive (`archive.restore_archive`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import is_object_store_url
from ..errors import InputError, StorageError
from ..records.element_state import read_state
from ..util.ids import path_inside, validate_workflow_id
from .archive import archive_context, archive_path, read_sidecar, restore_archive, verify_sidecar
from .objectstore import ObjectStore, S3Url, Settings


@dataclass(frozen=True)
class ArchiveRecord:
    """An archive that is complete and verified where it was put."""

    location: str  # a file path or an s3:// URL
    sha256: str
    size: int

    def info(self) -> dict[str, Any]:
        """The keys the epilogue keeps in the state file (what cleanup and restore check against)."""
        return {"archive": self.location, "archive_sha256": self.sha256, "archive_size": self.size}


def locate(archive_dir: str | os.PathLike[str], workflow_id: str) -> str:
    """Where `workflow_id`'s archive is (or would be) under `archive_dir`: a path or a URL."""
    if is_object_store_url(archive_dir):
        where = S3Url.parse(str(archive_dir))
        return where.url(where.archive_key(workflow_id))
    return str(archive_path(archive_dir, workflow_id))


def archive_to(
    context_dir: Path,
    archive_dir: str | os.PathLike[str],
    workflow_id: str | None = None,
    *,
    plan: str | None = None,
    index: int | None = None,
    settings: Settings | None = None,
) -> ArchiveRecord:
    """Archive a context into `archive_dir` (directory or `s3://`); the context is never touched."""
    context_dir = Path(context_dir)
    workflow_id = validate_workflow_id(workflow_id or context_dir.name)
    if not is_object_store_url(archive_dir):
        path = archive_context(context_dir, Path(archive_dir), workflow_id)
        return ArchiveRecord(str(path), read_sidecar(path) or "", path.stat().st_size)
    store = ObjectStore(str(archive_dir), settings)
    store.check_bucket()  # fail in a second, before building anything, on a wrong bucket or key
    key = store.where.archive_key(workflow_id)
    tmp = Path(tempfile.mkdtemp(prefix=f".upload-{workflow_id}.", dir=context_dir.parent))
    try:
        path = archive_context(context_dir, tmp, workflow_id)
        sha256, size = read_sidecar(path) or "", path.stat().st_size
        meta = {"workflow-id": workflow_id, **({"plan": plan} if plan else {})}
        store.put_archive(path, key, sha256, meta)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    record = ArchiveRecord(store.where.url(key), sha256, size)
    if plan:
        store.record(plan, {"workflow_id": workflow_id, "index": index, "key": key, "size": size,
                            "sha256": sha256, "time": time.time()})
    return record


def archive_intact(location: str, sha256: str | None = None, size: int | None = None,
                   stores: dict[str, ObjectStore] | None = None) -> tuple[bool, str]:
    """(True, "") when the archive is where the state says, complete; else (False, why)."""
    if not is_object_store_url(location):
        path = Path(location)
        if not path.is_file() or verify_sidecar(path) is False:
            return False, f"archive {location} missing or damaged"
        return True, ""
    where = S3Url.parse(location)
    stores = {} if stores is None else stores
    store = stores.setdefault(where.bucket, ObjectStore(where.url("")))
    try:
        head = store.head(where.prefix)
    except StorageError as exc:
        return False, f"archive {location} cannot be checked: {exc}"
    if head is None:
        return False, f"archive {location} missing"
    meta = {k.lower(): v for k, v in (head.get("Metadata") or {}).items()}
    if (size is not None and int(head.get("ContentLength", -1)) != size) or (sha256 and meta.get("sha256") != sha256):
        return False, f"archive {location} differs from the one recorded (size or SHA-256)"
    return True, ""


def resolve_source(source: str, scratch_root: Path, archive_dir: str | os.PathLike[str]) -> tuple[str, str | None]:
    """What `mace contexts restore SOURCE` means: (path or URL, SHA-256 the tombstone recorded).

    SOURCE is an archive file, an `s3://` URL, or a workflow id (its tombstone's archive, else
    `<archive_dir>/<id>.tar.gz`, never a listing of the bucket).
    """
    if is_object_store_url(source) or os.path.sep in source or source.endswith(".tar.gz") or os.path.exists(source):
        return source, None
    try:
        workflow_id = validate_workflow_id(source)
    except InputError:
        raise InputError(f"restore: {source!r} is neither an archive, an s3:// URL nor a workflow id") from None
    state = read_state(path_inside(scratch_root, workflow_id))
    recorded = state.epilogue.get("archive")
    if recorded:
        return str(recorded), state.epilogue.get("archive_sha256")
    return locate(archive_dir, workflow_id), None


def restore_from(source: str | os.PathLike[str], scratch_root: Path, *, sha256: str | None = None,
                 settings: Settings | None = None) -> Path:
    """Restore a context from a local archive or an `s3://` object; returns the context directory.

    A downloaded archive must match its object's SHA-256 metadata, the plan manifest's entry
    and `sha256` (what the tombstone recorded) when given; a mismatch is refused before anything
    is extracted. Extraction is `restore_archive`'s (the same allow-list as local archives).
    """
    scratch_root = Path(scratch_root).absolute()
    if not is_object_store_url(source):
        path = Path(source)
        if sha256 and path.is_file() and read_sidecar(path) not in (None, sha256):
            raise InputError(f"archive {path}: its SHA-256 is not the one recorded when it was archived")
        return restore_archive(path, scratch_root)
    url = str(source)
    where = S3Url.parse(url)
    key = where.prefix
    # the archive's own prefix, where its plan's manifest object is
    store = ObjectStore(where.url(key.rpartition("/")[0]), settings)
    if not key.endswith(".tar.gz"):
        raise InputError(f"restore: {url} does not name an archive (s3://bucket/prefix/<workflow_id>.tar.gz)")
    scratch_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=scratch_root))
    try:
        copy = tmp / Path(key).name
        fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            got, size, meta = store.download(key, out)
        _check_download(store, url, got, size, meta, sha256)
        try:
            return restore_archive(copy, scratch_root, source=url)
        except InputError as exc:
            raise InputError(str(exc).replace(str(copy), url)) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_download(store: ObjectStore, url: str, got: str, size: int, meta: dict[str, str],
                    recorded: str | None) -> None:
    """Refuse a downloaded archive whose SHA-256 is not the one every record of it names."""
    claimed = meta.get("sha256")
    if not claimed:
        raise StorageError(f"{url}: no sha256 metadata (not uploaded by mace-hpc); refused")
    if got != claimed or (meta.get("size") and meta["size"] != str(size)):
        raise StorageError(f"{url}: SHA-256 of the downloaded archive does not match its metadata "
                           "(tampered or corrupt object); nothing restored")
    if recorded and got != recorded:
        raise StorageError(f"{url}: SHA-256 differs from the one recorded when it was archived; nothing restored")
    plan, wid = meta.get("plan"), meta.get("workflow-id")
    if plan and wid:
        manifest, _ = store.read_manifest(plan)
        entry = manifest["elements"].get(wid)
        if isinstance(entry, dict) and entry.get("sha256") not in (None, got):
            raise StorageError(f"{url}: SHA-256 differs from the plan manifest's entry for {wid}; nothing restored")
