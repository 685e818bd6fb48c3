"""archive_dir = s3://bucket/prefix against a real S3-API server on 127.0.0.1 (tests/s3_fixtures.py).

What is checked is what the store holds (objects, their metadata, the plan's manifest object, the
server's request log) and what the contexts and state files say; failures are one line, the
context kept and the element PENDING_MERGE until `mace merge` completes it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
from epilogue_helpers import make_context, make_submission
from s3_fixtures import Forwarder, MotoServer

from mace_hpc import records as st
from mace_hpc.cli.main import run
from mace_hpc.records.element_state import read_state

BUCKET = "mace-archives"
URL = f"s3://{BUCKET}/runs"
PY = sys.executable


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _object(server: MotoServer, key: str) -> tuple[bytes, dict[str, str]]:
    obj = server.client().get_object(Bucket=BUCKET, Key=key)
    return obj["Body"].read(), obj["Metadata"]


def _keys(server: MotoServer) -> set[str]:
    return {o["Key"] for o in server.client().list_objects_v2(Bucket=BUCKET).get("Contents", [])}


def _plan_manifest(server: MotoServer, plan: str) -> dict[str, Any]:
    return json.loads(_object(server, f"runs/manifests/{plan}.json")[0])


@pytest.fixture
def s3_env(s3: MotoServer, mace_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("MACE_ARCHIVE_DIR", URL)
    return {**mace_env, "server": s3}


def _submission(env: dict[str, Any], plan: str, n: int, **kw: Any) -> Any:
    return make_submission(env["scratch_root"], plan, n, shared_database=env["shared_database"],
                           archive_dir=URL, **kw)


# ---------------------------------------------------------------------------- the archive policies
def test_archive_policy_uploads_verified_objects_and_a_plan_manifest(s3_env, monkeypatch, capsys) -> None:
    server = s3_env["server"]
    monkeypatch.setenv("MACE_AUTO_CLEANUP", "true")
    _submission(s3_env, "arc", 3, on_complete="archive")
    assert run(["merge", "arc"]) == 0, capsys.readouterr()
    manifest = _plan_manifest(server, "arc")
    assert sorted(manifest["elements"]) == ["arc-e0", "arc-e1", "arc-e2"]
    for i in range(3):
        wid = f"arc-e{i}"
        ctx = s3_env["scratch_root"] / wid
        state = read_state(ctx)
        assert state.state == st.ARCHIVED and state.removed, state
        assert sorted(os.listdir(ctx)) == ["context.json", "state.json"]  # a tombstone
        body, meta = _object(server, f"runs/{wid}.tar.gz")
        entry = manifest["elements"][wid]
        assert meta["sha256"] == _sha(body) == entry["sha256"] == state.epilogue["archive_sha256"]
        assert entry["size"] == len(body) == state.epilogue["archive_size"]
        assert entry["key"] == f"runs/{wid}.tar.gz" and entry["index"] == i and entry["time"] > 0
        assert state.epilogue["archive"] == f"{URL}/{wid}.tar.gz"
        with tarfile.open(fileobj=io.BytesIO(body)) as tar:
            assert f"{wid}/calculations/s/stdout.txt" in tar.getnames()
    # finding and checking archives never listed the bucket
    assert "list-type" not in server.requests() and f"GET /{BUCKET}?" not in server.requests()
    # and nothing but the archives and the manifest was left (no temp keys, no temp files)
    assert _keys(server) == {f"runs/arc-e{i}.tar.gz" for i in range(3)} | {"runs/manifests/arc.json"}
    assert not [p for p in s3_env["scratch_root"].iterdir() if p.name.startswith((".upload", ".download"))]


def test_merge_plus_archive_then_restore_by_workflow_id_and_url(s3_env, monkeypatch, capsys) -> None:
    monkeypatch.setenv("MACE_AUTO_CLEANUP", "true")
    _submission(s3_env, "ma", 2, on_complete="merge+archive")
    assert run(["merge", "ma"]) == 0
    ctx0, ctx1 = (s3_env["scratch_root"] / f"ma-e{i}" for i in range(2))
    assert read_state(ctx0).state == st.MERGED and read_state(ctx0).removed
    capsys.readouterr()
    assert run(["contexts", "restore", "ma-e0"]) == 0  # by workflow id: the tombstone names the object
    assert capsys.readouterr().out.strip() == str(ctx0)
    assert (ctx0 / "calculations/s/stdout.txt").read_text() == "output of ma-e0\n"
    state = read_state(ctx0)
    assert state.state == st.MERGED and not state.removed and state.restored_from == f"{URL}/ma-e0.tar.gz"
    assert run(["contexts", "restore", f"{URL}/ma-e1.tar.gz"]) == 0  # by URL
    assert (ctx1 / "materials.db").is_file()
    assert run(["contexts", "restore", "ma-e1"]) == 2  # a live context is never overwritten
    assert "already exists" in capsys.readouterr().err
    assert run(["merge", "ma"]) == 0 and read_state(ctx0).state == st.MERGED  # restored: not finalized again


def test_contexts_archive_and_cleanup_go_to_the_bucket(s3_env, capsys) -> None:
    server = s3_env["server"]
    _submission(s3_env, "cl", 2, on_complete="merge")
    assert run(["merge", "cl"]) == 0
    capsys.readouterr()
    assert run(["contexts", "archive", "cl-e0"]) == 0
    assert capsys.readouterr().out.strip() == f"{URL}/cl-e0.tar.gz"
    assert "cl-e0" in _plan_manifest(server, "cl")["elements"]
    # cleanup archives MERGED contexts to the bucket first, and records where in the tombstone
    assert run(["cleanup", "--older-than", "0s"]) == 0
    for i in range(2):
        state = read_state(s3_env["scratch_root"] / f"cl-e{i}")
        assert state.removed and state.epilogue["archive"] == f"{URL}/cl-e{i}.tar.gz"
        body, meta = _object(server, f"runs/cl-e{i}.tar.gz")
        assert meta["sha256"] == _sha(body) == state.epilogue["archive_sha256"]


def test_cleanup_removes_an_archived_context_only_while_its_object_is_intact(s3_env, capsys) -> None:
    server = s3_env["server"]
    _submission(s3_env, "ci", 2, on_complete="archive")
    assert run(["merge", "ci"]) == 0
    server.client().delete_object(Bucket=BUCKET, Key="runs/ci-e1.tar.gz")
    capsys.readouterr()
    assert run(["cleanup", "--older-than", "0s", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [c["workflow_id"] for c in report["removed"]] == ["ci-e0"]
    kept = {c["workflow_id"]: c["why"] for c in report["kept"]}
    assert kept["ci-e1"] == f"archive {URL}/ci-e1.tar.gz missing"
    assert (s3_env["scratch_root"] / "ci-e1" / "materials.db").is_file()


# ---------------------------------------------------------------------------- failures
def _pending_then_merged(env: dict[str, Any], plan: str, fix: Any, expect: str, capsys: Any) -> None:
    """`mace merge` leaves the element PENDING_MERGE with `expect` in its reason and the context
    intact; after `fix()` the next `mace merge` archives it."""
    ctx = env["scratch_root"] / f"{plan}-e0"
    data = {n: (ctx / n).read_bytes() for n in ("materials.db", "calculations/s/stdout.txt", "context.json")}
    assert run(["merge", plan]) == 1
    out = capsys.readouterr().out
    state = read_state(ctx)
    assert state.state == st.PENDING_MERGE and expect in state.pending_reason, state.pending_reason
    assert "context kept" in state.pending_reason and expect in out
    assert {n: (ctx / n).read_bytes() for n in data} == data
    fix()
    assert run(["merge", plan]) == 0, capsys.readouterr()
    assert read_state(ctx).state == st.ARCHIVED


def test_wrong_credentials_leave_the_archive_pending_and_never_show_the_key(s3_env, monkeypatch, capsys) -> None:
    server = s3_env["server"]
    _submission(s3_env, "wc", 1, on_complete="archive")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    _pending_then_merged(s3_env, "wc", lambda: monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret),
                         "refused the credentials (", capsys)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWN000000000")
    assert run(["contexts", "archive", "wc-e0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refused the credentials (403)" in err
    ctx = s3_env["scratch_root"] / "wc-e0"
    seen = err + json.dumps(read_state(ctx).to_dict()) + (ctx / "logs" / "epilogue.log").read_text()
    assert server.secret not in seen and server.key_id not in seen and "not-the-secret" not in seen


def test_a_store_refusing_the_upload_itself_is_one_line(s3_env, monkeypatch, capsys) -> None:
    """HEAD allowed, PUT denied: the error inside boto3's managed upload is named, not a traceback."""
    server = s3_env["server"]
    make_context(s3_env["scratch_root"] / "ro-e0", "ro-e0")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.reader[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.reader[1])
    assert run(["contexts", "archive", "ro-e0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mace: error: uploading {URL}/ro-e0.tar.gz: the object store at {server.url} "
                          "refused the credentials (AccessDenied)") and err.count("\n") == 1, err
    assert _keys(server) == set() and (s3_env["scratch_root"] / "ro-e0" / "materials.db").is_file()


def test_a_missing_bucket_is_one_line_and_the_archive_pending(s3_env, monkeypatch, capsys) -> None:
    server = s3_env["server"]
    _submission(s3_env, "nb", 1, on_complete="archive")
    server.client().delete_bucket(Bucket=BUCKET)
    assert run(["contexts", "archive", "nb-e0"]) == 2
    err = capsys.readouterr().err
    assert err == f"mace: error: s3://{BUCKET}: bucket '{BUCKET}' does not exist at {server.url}; " \
                  "create it or fix archive_dir\n"
    _pending_then_merged(s3_env, "nb", lambda: server.client().create_bucket(Bucket=BUCKET),
                         f"bucket '{BUCKET}' does not exist", capsys)


def test_an_endpoint_that_is_down_exits_3_and_the_archive_stays_pending(s3_env, monkeypatch, capsys) -> None:
    from s3_fixtures import free_port

    server = s3_env["server"]
    _submission(s3_env, "dn", 1, on_complete="archive")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    assert run(["contexts", "archive", "dn-e0"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot reach the object store at http://127.0.0.1:" in err
    # the site config key wins over the environment
    _pending_then_merged(s3_env, "dn", lambda: monkeypatch.setenv("MACE_ARCHIVE_ENDPOINT_URL", server.url),
                         "cannot reach the object store", capsys)


def _big_context(env: dict[str, Any], plan: str, mib: int) -> Path:
    _submission(env, plan, 1, on_complete="archive")
    ctx = env["scratch_root"] / f"{plan}-e0"
    (ctx / "calculations" / "s" / "big.bin").write_bytes(os.urandom(mib << 20))  # incompressible
    return ctx


def _merge_cut_mid_upload(env: dict[str, Any], monkeypatch: Any, plan: str, after: int, on_cut: Any = None) -> Path:
    """A 24 MiB context archived in 5 MiB parts through a forwarder that cuts the connection
    after `after` bytes (calling `on_cut`): `mace merge` fails and leaves it PENDING_MERGE."""
    ctx = _big_context(env, plan, 24)
    proxy = Forwarder(env["server"].port)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    monkeypatch.setenv("MACE_ARCHIVE_PART_SIZE", "5")
    proxy.cut_after(after, on_cut=on_cut)
    assert run(["merge", plan]) == 1
    assert read_state(ctx).state == st.PENDING_MERGE
    return ctx


def test_server_killed_mid_upload_leaves_nothing_and_merge_completes_it_later(s3_env, monkeypatch, capsys) -> None:
    """The upload goes in 5 MiB parts through a forwarder that SIGKILLs the server after 8 MiB."""
    server = s3_env["server"]
    ctx = _merge_cut_mid_upload(s3_env, monkeypatch, "km", 8 << 20, on_cut=server.kill)
    assert "cannot reach the object store" in read_state(ctx).pending_reason
    assert (ctx / "calculations" / "s" / "big.bin").stat().st_size == 24 << 20
    assert server.proc is not None and server.proc.poll() is not None  # it really died mid-upload
    capsys.readouterr()
    server.start()  # a new, empty endpoint on the same port
    server.client().create_bucket(Bucket=BUCKET)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret)
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
    assert run(["merge", "km"]) == 0, capsys.readouterr()
    state = read_state(ctx)
    body, meta = _object(server, "runs/km-e0.tar.gz")
    assert state.state == st.ARCHIVED and meta["sha256"] == _sha(body) == state.epilogue["archive_sha256"]


def test_connection_cut_mid_upload_leaves_no_object_under_the_final_key(s3_env, monkeypatch, capsys) -> None:
    """The server lives on (so what it holds can be inspected): the final key never appears."""
    server = s3_env["server"]
    ctx = _merge_cut_mid_upload(s3_env, monkeypatch, "cut", 12 << 20)
    assert _keys(server) == set()  # no archive, no manifest entry: the multipart upload never completed
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
    assert run(["merge", "cut"]) == 0, capsys.readouterr()
    assert _keys(server) == {"runs/cut-e0.tar.gz", "runs/manifests/cut.json"}
    assert read_state(ctx).epilogue["archive_size"] > 24 << 20


# ---------------------------------------------------------------------------- restore refusals
def test_a_tampered_object_is_refused_and_nothing_is_restored(s3_env, monkeypatch, capsys) -> None:
    server = s3_env["server"]
    monkeypatch.setenv("MACE_AUTO_CLEANUP", "true")
    _submission(s3_env, "tp", 2, on_complete="archive")
    assert run(["merge", "tp"]) == 0
    c = server.client()
    # 1: bytes changed, metadata kept: the download does not hash to its own metadata
    body, meta = _object(server, "runs/tp-e0.tar.gz")
    c.put_object(Bucket=BUCKET, Key="runs/tp-e0.tar.gz", Body=body[:-10] + b"\0" * 10, Metadata=meta)
    # 2: a consistent forgery (other bytes, their own SHA-256): the tombstone and manifest disagree
    other, _ = _object(server, "runs/tp-e1.tar.gz")
    forged = other + b"\0" * 512
    c.put_object(Bucket=BUCKET, Key="runs/tp-e1.tar.gz", Body=forged,
                 Metadata={"sha256": _sha(forged), "size": str(len(forged)), "plan": "tp", "workflow-id": "tp-e1"})
    capsys.readouterr()
    assert run(["contexts", "restore", "tp-e0"]) == 2
    assert "does not match its metadata (tampered or corrupt object); nothing restored" in capsys.readouterr().err
    assert run(["contexts", "restore", "tp-e1"]) == 2
    assert "differs from the one recorded when it was archived" in capsys.readouterr().err
    assert run(["contexts", "restore", f"{URL}/tp-e1.tar.gz"]) == 2  # by URL: the plan manifest disagrees
    assert "differs from the plan manifest's entry for tp-e1" in capsys.readouterr().err
    for i in range(2):
        assert sorted(os.listdir(s3_env["scratch_root"] / f"tp-e{i}")) == ["context.json", "state.json"]
    assert not [p for p in s3_env["scratch_root"].iterdir() if p.name.startswith(".download")]


def test_a_malicious_archive_from_the_bucket_is_refused_like_a_local_one(s3_env, capsys) -> None:
    server = s3_env["server"]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("evil-e0/link")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    data = buf.getvalue()
    server.client().put_object(Bucket=BUCKET, Key="runs/evil-e0.tar.gz", Body=data,
                               Metadata={"sha256": _sha(data), "size": str(len(data))})
    assert run(["contexts", "restore", f"{URL}/evil-e0.tar.gz"]) == 2
    err = capsys.readouterr().err
    assert err == "mace: error: archive member 'evil-e0/link': symlink refused (only files and directories)\n"
    assert not os.path.lexists(s3_env["scratch_root"] / "evil-e0")
    assert run(["contexts", "restore", f"{URL}/missing-e0.tar.gz"]) == 2
    assert "no such archive" in capsys.readouterr().err


# ---------------------------------------------------------------------------- restore and resume
def test_resubmit_restores_an_archived_cleaned_context_and_resumes_it(s3_env, tmp_path, monkeypatch) -> None:
    """Local backend: step `one` ran, step `two` failed; the element was archived to the bucket and
    cleaned up. `mace resubmit` brings the context back from the bucket and the runner skips `one`."""
    from mace_hpc.submission.control import resubmit
    from mace_hpc.submission.submit import submit_plan

    server = s3_env["server"]
    monkeypatch.setenv("MACE_AUTO_CLEANUP", "true")
    flag = tmp_path / "allow"
    plan = {"name": "rs", "isolation_mode": "isolated", "on_failure": "archive", "elements": [{"id": "e0", "steps": [
        {"name": "one", "command": ["sh", "-c", 'echo run >> "$MACE_CONTEXT_DIR/one_runs"']},
        {"name": "two", "command": [PY, "-c", f"import os, sys; sys.exit(0 if os.path.exists({str(flag)!r}) else 3)"]},
    ]}]}
    submit_plan(plan, backend="local")
    ctx = s3_env["scratch_root"] / "rs-e0"
    first = read_state(ctx)
    assert first.state == st.ARCHIVED and first.run_state == st.FAILED and first.removed
    assert first.epilogue["archive"] == f"{URL}/rs-e0.tar.gz" and not (ctx / "one_runs").exists()
    assert _plan_manifest(server, "rs")["elements"]["rs-e0"]["sha256"] == first.epilogue["archive_sha256"]
    flag.touch()
    resubmit("rs")
    state = read_state(ctx)
    assert state.run_state == st.COMPLETED and state.restored_from == f"{URL}/rs-e0.tar.gz"
    # merged, archived again (cleanup on): the new archive holds the restored files, step one ran once
    assert state.state == st.MERGED and state.removed and state.epilogue["archive_sha256"] != first.epilogue["archive_sha256"]
    body, _ = _object(server, "runs/rs-e0.tar.gz")
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        assert tar.extractfile("rs-e0/one_runs").read() == b"run\n"  # type: ignore[union-attr]


def test_resubmit_refuses_when_the_archive_cannot_be_fetched(s3_env, tmp_path, monkeypatch, capsys) -> None:
    from mace_hpc.submission.submit import submit_plan

    monkeypatch.setenv("MACE_AUTO_CLEANUP", "true")
    plan = {"name": "rf", "isolation_mode": "isolated", "on_failure": "archive",
            "elements": [{"id": "e0", "steps": [{"name": "s", "command": ["false"]}]}]}
    submit_plan(plan, backend="local")
    s3_env["server"].kill()
    capsys.readouterr()
    assert run(["resubmit", "rf"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("mace: error: resubmit: restoring rf-e0 from its archive failed: ")
    assert err.endswith("nothing resubmitted\n") and err.count("\n") == 1
    assert read_state(s3_env["scratch_root"] / "rf-e0").state == st.ARCHIVED  # untouched


# ---------------------------------------------------------------------------- configuration
@pytest.mark.parametrize("value, why", [
    ("gs://bucket/x", "no other scheme"), ("s3://A_B/x", "valid bucket name"), ("s3://ok-bucket/../x", "no . or .."),
])
def test_bad_archive_urls_are_one_line(value, why, monkeypatch, capsys) -> None:
    monkeypatch.setenv("MACE_ARCHIVE_DIR", value)
    assert run(["contexts", "list"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "archive_dir" in err and why in err


def test_without_boto3_an_s3_archive_dir_is_one_line(mace_env, monkeypatch, capsys) -> None:
    make_context(mace_env["scratch_root"] / "nb-e0", "nb-e0")
    monkeypatch.setenv("MACE_ARCHIVE_DIR", URL)
    monkeypatch.setitem(sys.modules, "boto3", None)  # as if not installed
    assert run(["contexts", "archive", "nb-e0"]) == 2
    assert capsys.readouterr().err == ("mace: error: archive_dir is an s3:// URL but boto3 is not installed; "
                                       "pip install 'mace-hpc[s3]'\n")


# ---------------------------------------------------------------------------- real SLURM
@pytest.mark.slurm
def test_slurm_array_archives_into_the_bucket_and_restores(slurm_cluster, s3_env, tmp_path, monkeypatch,
                                                          capsys) -> None:
    """Four elements on the real cluster, merge+archive with cleanup: each job's epilogue uploads
    its context (the jobs inherit AWS_* and MACE_* through --export=ALL) and records it in the
    plan's manifest object concurrently; then one context comes back from the bucket."""
    import subprocess
    import time

    from mace_hpc.submission.submit import submit_plan

    server, root, n = s3_env["server"], s3_env["scratch_root"], 4
    monkeypatch.setenv("MACE_AUTO_CLEANUP", "true")
    os.chmod(tmp_path, 0o755)
    write = "import json; json.dump(dict(energy=-IDX, volume=16.5), open('results.json', 'w'))"
    plan = {"name": "s3slurm", "isolation_mode": "isolated", "on_complete": "merge+archive", "max_parallel": n,
            "resources": {"time": 5, "signal_margin": 30},
            "elements": [{"id": f"e{i}", "materials": [{"material_id": f"m{i}", "formula": "Al", "space_group": 225}],
                          "steps": [{"name": "s", "calc_type": "SP",
                                     "command": [PY, "-c", write.replace("IDX", str(i))]}]} for i in range(n)]}
    result = submit_plan(plan, site="ci-slurm", backend="slurm")
    jobs = [*result.job_ids, *([result.backstop_job_id] if result.backstop_job_id else [])]
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        q = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(jobs), "-o", "%i"], capture_output=True, text=True)
        if q.returncode == 0 and not q.stdout.strip():
            break
        time.sleep(1)
    states = [read_state(root / f"s3slurm-e{i}") for i in range(n)]
    assert [(s.state, s.removed) for s in states] == [(st.MERGED, True)] * n, [s.pending_reason for s in states]
    manifest = _plan_manifest(server, "s3slurm")
    assert sorted(manifest["elements"]) == [f"s3slurm-e{i}" for i in range(n)]  # no concurrent write lost
    for i, state in enumerate(states):
        body, meta = _object(server, f"runs/s3slurm-e{i}.tar.gz")
        assert meta["sha256"] == _sha(body) == state.epilogue["archive_sha256"] == \
            manifest["elements"][f"s3slurm-e{i}"]["sha256"]
    capsys.readouterr()
    assert run(["contexts", "restore", "s3slurm-e2"]) == 0
    assert json.loads((root / "s3slurm-e2" / "calculations" / "s" / "results.json").read_text())["energy"] == -2


def test_a_local_archive_restores_over_its_tombstone_by_workflow_id(mace_env, monkeypatch, capsys) -> None:
    """The same interface with a directory: restore by workflow id replaces the tombstone."""
    monkeypatch.setenv("MACE_AUTO_CLEANUP", "true")
    make_submission(mace_env["scratch_root"], "loc", 1, shared_database=mace_env["shared_database"],
                    archive_dir=mace_env["archive_dir"], on_complete="archive")
    assert run(["merge", "loc"]) == 0
    ctx = mace_env["scratch_root"] / "loc-e0"
    archived = read_state(ctx)
    assert archived.removed and archived.epilogue["archive"] == str(mace_env["archive_dir"] / "loc-e0.tar.gz")
    assert archived.epilogue["archive_sha256"] == _sha((mace_env["archive_dir"] / "loc-e0.tar.gz").read_bytes())
    assert run(["contexts", "restore", "loc-e0"]) == 0
    state = read_state(ctx)
    assert state.state == st.ARCHIVED and not state.removed and (ctx / "materials.db").is_file()


def test_concurrent_manifest_updates_lose_no_entry(s3_env) -> None:
    """Sixteen epilogues recording into one plan manifest at once (compare-and-swap on the ETag)."""
    from concurrent.futures import ThreadPoolExecutor

    from mace_hpc.context.objectstore import ObjectStore

    def record(i: int) -> None:
        ObjectStore(URL).record("cc", {"workflow_id": f"cc-e{i}", "index": i, "key": f"runs/cc-e{i}.tar.gz",
                                       "size": i, "sha256": _sha(str(i).encode()), "time": 0.0})

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(record, range(16)))
    elements = _plan_manifest(s3_env["server"], "cc")["elements"]
    assert sorted(elements) == sorted(f"cc-e{i}" for i in range(16))
    assert all(elements[f"cc-e{i}"]["sha256"] == _sha(str(i).encode()) for i in range(16))
