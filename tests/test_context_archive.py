"""Context archives: round trip, checksums, settled journals, disk full, and hostile tarballs refused."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import stat
import tarfile
from pathlib import Path

import pytest
from epilogue_helpers import make_context, tree

from mace_hpc.context.archive import (
    MANIFEST_NAME,
    SIDECAR_SUFFIX,
    archive_context,
    restore_archive,
    verify_sidecar,
)
from mace_hpc.errors import InputError

WID = "plan-e0"


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    return make_context(tmp_path / "scratch" / WID, WID, materials=2)


def test_round_trip_restores_every_file_byte_for_byte(ctx: Path, tmp_path: Path) -> None:
    before = {p: (ctx / p).read_bytes() for p in tree(ctx) if not p.endswith(("-wal", "-shm", "-journal"))}
    archive = archive_context(ctx, tmp_path / "archives", WID)
    assert archive == tmp_path / "archives" / f"{WID}.tar.gz"
    assert verify_sidecar(archive) is True
    assert sorted(os.listdir(tmp_path / "archives")) == [f"{WID}.tar.gz", f"{WID}.tar.gz{SIDECAR_SUFFIX}"]
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile(f"{WID}/{MANIFEST_NAME}").read())
    assert all(n.startswith(f"{WID}/") for n in names)
    assert set(manifest["sha256"]) == set(before)

    new_root = tmp_path / "restored"
    target = restore_archive(archive, new_root)
    assert target == new_root / WID
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    after = {p: (target / p).read_bytes() for p in tree(target)}
    assert after == before
    conn = sqlite3.connect(target / "materials.db")
    assert conn.execute("SELECT count(*) FROM materials").fetchone()[0] == 2
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    assert [p.name for p in new_root.iterdir()] == [WID]  # no temp dir left behind


def test_uncheckpointed_wal_rows_are_in_the_archive(tmp_path: Path) -> None:
    ctx = tmp_path / "scratch" / WID
    ctx.mkdir(parents=True)
    writer = sqlite3.connect(ctx / "materials.db")
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("CREATE TABLE t (x)")
    writer.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(100)])
    writer.commit()
    assert (ctx / "materials.db-wal").stat().st_size > 0  # the rows live only in the WAL so far
    archive = archive_context(ctx, tmp_path / "archives", WID)
    writer.close()
    target = restore_archive(archive, tmp_path / "restored")
    conn = sqlite3.connect(target / "materials.db")
    assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 100
    conn.close()


def test_symlinks_and_special_files_are_not_archived(ctx: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    (ctx / "link").symlink_to(secret)
    (ctx / "dirlink").symlink_to(tmp_path)
    os.mkfifo(ctx / "fifo")
    archive = archive_context(ctx, tmp_path / "archives", WID)
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        assert all(m.isfile() for m in tar.getmembers())
    assert not any(n.endswith(("/link", "/fifo")) or "/dirlink" in n for n in names)


def test_rearchiving_replaces_the_archive_only_when_complete(ctx: Path, tmp_path: Path) -> None:
    first = archive_context(ctx, tmp_path / "archives", WID)
    (ctx / "new.txt").write_text("later output")
    second = archive_context(ctx, tmp_path / "archives", WID)
    assert first == second and verify_sidecar(second) is True
    with tarfile.open(second) as tar:
        assert f"{WID}/new.txt" in tar.getnames()
    assert len(os.listdir(tmp_path / "archives")) == 2


# ---------------------------------------------------------------------------- disk full
def test_disk_full_leaves_no_partial_archive_and_the_context_intact(ctx: Path, tiny_fs: Path) -> None:
    (ctx / "calculations" / "s" / "big.bin").write_bytes(os.urandom(3 << 20))  # incompressible, > 1 MiB
    before = {p: hashlib.sha256((ctx / p).read_bytes()).hexdigest() for p in tree(ctx)}
    with pytest.raises(OSError) as err:
        archive_context(ctx, tiny_fs / "archives", WID)
    assert "No space left" in str(err.value)
    assert tree(tiny_fs) == []
    assert {p: hashlib.sha256((ctx / p).read_bytes()).hexdigest() for p in tree(ctx)} == before


def test_restore_onto_a_full_filesystem_is_one_error_and_leaves_nothing(ctx: Path, tmp_path: Path, tiny_fs: Path) -> None:
    (ctx / "calculations" / "s" / "big.bin").write_bytes(os.urandom(3 << 20))  # does not fit in 1 MiB
    archive = archive_context(ctx, tmp_path / "archives", WID)
    with pytest.raises(InputError) as err:
        restore_archive(archive, tiny_fs / "scratch")
    assert "No space left" in str(err.value) and "nothing was restored" in str(err.value)
    assert tree(tiny_fs) == [] and os.listdir(tiny_fs / "scratch") == []  # no temp dir, no half context


def test_restore_cli_onto_a_full_filesystem_exits_2(ctx: Path, tmp_path: Path, tiny_fs: Path, capsys) -> None:
    from mace_hpc.cli.main import main

    (ctx / "calculations" / "s" / "big.bin").write_bytes(os.urandom(3 << 20))
    archive = archive_context(ctx, tmp_path / "archives", WID)
    assert main(["contexts", "--scratch-root", str(tiny_fs), "restore", str(archive)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left" in err[0]
    assert tree(tiny_fs) == []


# ---------------------------------------------------------------------------- hostile archives
def _craft(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], *, manifest: dict | None = None,
           wid: str = WID) -> Path:
    """A tar.gz with exactly these members (+ a manifest covering the regular files, unless given)."""
    if manifest is None:
        files = {m.name.split("/", 1)[1]: hashlib.sha256(d or b"").hexdigest()
                 for m, d in members if m.isfile() and m.name.startswith(f"{wid}/") and "/" in m.name}
        manifest = {"workflow_id": wid, "sha256": files}
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
        if manifest is not False:
            blob = json.dumps(manifest).encode()
            info = tarfile.TarInfo(f"{wid}/{MANIFEST_NAME}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def _file(name: str, data: bytes = b"x", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = mode
    return info, data


def _special(name: str, kind: bytes, **attrs) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    for k, v in attrs.items():
        setattr(info, k, v)
    return info, None


HOSTILE = {
    "dotdot": ([_file(f"{WID}/state.json"), _file(f"{WID}/../evil.txt")], "'..'"),
    "dotdot_deep": ([_file(f"{WID}/a/../../evil.txt")], "'..'"),
    "absolute": ([_file(f"{WID}/state.json"), _file("/tmp/mace-evil-absolute.txt")], "absolute"),
    "symlink": ([_file(f"{WID}/state.json"), _special(f"{WID}/link", tarfile.SYMTYPE, linkname="/etc/passwd")], "symlink"),
    "symlink_relative": ([_special(f"{WID}/link", tarfile.SYMTYPE, linkname="state.json")], "symlink"),
    "hardlink": ([_file(f"{WID}/state.json"), _special(f"{WID}/hard", tarfile.LNKTYPE, linkname=f"{WID}/state.json")], "hard link"),
    "chardev": ([_special(f"{WID}/null", tarfile.CHRTYPE, devmajor=1, devminor=3)], "device"),
    "blockdev": ([_special(f"{WID}/sda", tarfile.BLKTYPE, devmajor=8, devminor=0)], "device"),
    "fifo": ([_special(f"{WID}/pipe", tarfile.FIFOTYPE)], "special"),
    "two_contexts": ([_file(f"{WID}/state.json"), _file("other-wf/state.json")], "outside"),
    "bad_top": ([_file("bad id!/state.json")], "invalid workflow id"),
    "file_as_top": ([_file(WID)], "context directory"),
    "duplicate": ([_file(f"{WID}/state.json", b"a"), _file(f"{WID}/state.json", b"b")], "twice"),
    "newline_top": ([_file(f"{WID}\n/state.json")], "invalid workflow id"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_members_are_refused_and_nothing_is_written(case: str, tmp_path: Path) -> None:
    members, expected = HOSTILE[case]
    archive = _craft(tmp_path / f"{case}.tar.gz", members)
    root = tmp_path / "scratch"
    with pytest.raises(InputError) as err:
        restore_archive(archive, root)
    assert expected in str(err.value)
    assert not root.exists() or list(root.iterdir()) == []
    assert not Path("/tmp/mace-evil-absolute.txt").exists()
    assert not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_the_allow_list_alone_refuses_hostile_members(case: str, tmp_path: Path, monkeypatch) -> None:
    """Pythons before 3.11.4 have no tarfile.data_filter: our allow-list must be enough on its own."""
    from mace_hpc.context import archive as archive_mod

    monkeypatch.setattr(archive_mod, "_DATA_FILTER", None)
    members, expected = HOSTILE[case]
    with pytest.raises(InputError) as err:
        restore_archive(_craft(tmp_path / f"{case}.tar.gz", members), tmp_path / "scratch")
    assert expected in str(err.value)
    assert not (tmp_path / "scratch").exists() or list((tmp_path / "scratch").iterdir()) == []


def test_setuid_bits_are_not_restored(tmp_path: Path) -> None:
    archive = _craft(tmp_path / "a.tar.gz", [_file(f"{WID}/tool", b"#!/bin/sh\n", mode=0o4755)])
    target = restore_archive(archive, tmp_path / "scratch")
    assert stat.S_IMODE((target / "tool").stat().st_mode) == 0o600


def test_tampered_file_fails_the_manifest_check(tmp_path: Path) -> None:
    manifest = {"workflow_id": WID, "sha256": {"state.json": hashlib.sha256(b"original").hexdigest()}}
    archive = _craft(tmp_path / "a.tar.gz", [_file(f"{WID}/state.json", b"tampered")], manifest=manifest)
    with pytest.raises(InputError, match="does not match its SHA-256"):
        restore_archive(archive, tmp_path / "scratch")
    assert list((tmp_path / "scratch").iterdir()) == []  # the temp dir is gone too


def test_unlisted_and_missing_files_are_refused(tmp_path: Path) -> None:
    listed = {"workflow_id": WID, "sha256": {"a.txt": hashlib.sha256(b"a").hexdigest()}}
    extra = _craft(tmp_path / "extra.tar.gz", [_file(f"{WID}/a.txt", b"a"), _file(f"{WID}/b.txt", b"b")], manifest=listed)
    with pytest.raises(InputError, match="do not match the manifest"):
        restore_archive(extra, tmp_path / "s1")
    missing = _craft(tmp_path / "missing.tar.gz", [_file(f"{WID}/b.txt", b"b")], manifest=listed)
    with pytest.raises(InputError, match="do not match the manifest"):
        restore_archive(missing, tmp_path / "s2")


def test_archive_without_manifest_is_refused(tmp_path: Path) -> None:
    archive = _craft(tmp_path / "a.tar.gz", [_file(f"{WID}/state.json")], manifest=False)
    with pytest.raises(InputError, match=MANIFEST_NAME):
        restore_archive(archive, tmp_path / "scratch")


def test_sidecar_mismatch_is_refused(ctx: Path, tmp_path: Path) -> None:
    archive = archive_context(ctx, tmp_path / "archives", WID)
    sidecar = archive.with_name(archive.name + SIDECAR_SUFFIX)
    sidecar.write_text("0" * 64 + f"  {archive.name}\n")
    with pytest.raises(InputError, match="SHA-256 does not match"):
        restore_archive(archive, tmp_path / "restored")


def test_truncated_archive_is_refused(ctx: Path, tmp_path: Path) -> None:
    archive = archive_context(ctx, tmp_path / "archives", WID)
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(InputError):
        restore_archive(cut, tmp_path / "restored")
    assert not (tmp_path / "restored" / WID).exists()


def test_existing_context_is_never_overwritten(ctx: Path, tmp_path: Path) -> None:
    archive = archive_context(ctx, tmp_path / "archives", WID)
    (ctx / "state.json").write_text('{"state": "RUNNING"}')
    with pytest.raises(InputError, match="already exists"):
        restore_archive(archive, ctx.parent)
    assert json.loads((ctx / "state.json").read_text()) == {"state": "RUNNING"}
    empty = tmp_path / "root2" / WID
    empty.mkdir(parents=True)  # even an empty directory is somebody's
    with pytest.raises(InputError, match="already exists"):
        restore_archive(archive, empty.parent)


def test_cli_contexts_restore(ctx: Path, tmp_path: Path, capsys) -> None:
    from mace_hpc.cli.main import main

    archive = archive_context(ctx, tmp_path / "archives", WID)
    root = tmp_path / "other-scratch"
    assert main(["contexts", "--scratch-root", str(root), "restore", str(archive)]) == 0
    assert capsys.readouterr().out.strip() == str(root / WID)
    assert main(["contexts", "--scratch-root", str(root), "restore", str(archive)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_a_deeply_nested_manifest_is_refused_in_one_line(tmp_path: Path) -> None:
    blob = b"[" * 200_000 + b"]" * 200_000  # json.loads would raise RecursionError
    archive = tmp_path / "deep.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo(f"{WID}/{MANIFEST_NAME}")
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    with pytest.raises(InputError, match=f"unreadable {MANIFEST_NAME}"):
        restore_archive(archive, tmp_path / "scratch")
