"""mace_hpc.records: every hand-off file through its one writer and reader, and what a bad one gives.

The other stages trust these files blindly, so each record must come back exactly as written, an
unusable one must be a one-line RecordError naming the file (never a traceback), and a state file
that cannot be read must read as "never ran" (PENDING), not crash `mace status`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from submit_fakes import cli, write_plan

from mace_hpc.records import (
    ElementState,
    JobEntry,
    Manifest,
    ManifestEntry,
    RecordError,
    Runner,
    State,
    SubmissionRecord,
    load_manifest,
    load_record,
    read_state,
    read_state_strict,
    write_manifest,
    write_record,
    write_state,
)
from mace_hpc.records import states as st
from mace_hpc.records.env import element_env
from mace_hpc.records.identity import ContextIdentity, read_identity, write_identity
from mace_hpc.records.layout import SubmissionPaths


def _manifest(tmp_path: Path) -> Manifest:
    return Manifest(
        plan="rt", isolation_mode="isolated", scratch_root=str(tmp_path), shared_database=str(tmp_path / "s.db"),
        archive_dir=str(tmp_path / "arch"), on_complete="merge+archive", on_failure="archive", plan_dir="/plans",
        elements=tuple(ManifestEntry(i, f"rt-e{i}", str(tmp_path / f"rt-e{i}")) for i in range(3)),
    )


def _record(tmp_path: Path) -> SubmissionRecord:
    return SubmissionRecord(
        plan="rt", backend="slurm", manifest=str(tmp_path / "manifest.json"), scratch_root=str(tmp_path),
        submitted_at=1700000000.5, site="ci-slurm", elements=4, max_parallel=3, on_complete="keep",
        shared_database="/shared.db", archive_dir="/arch", scheduler={"time": 5, "partition": "debug"},
        command=("python", "-m", "mace_hpc.element", "m.json"), env={"MACE_MANIFEST": "m.json"},
        jobs=(JobEntry("1001", indices=(0, 1, 2, 3), array="0-3", submitted_at=1.0),
              JobEntry("1002", kind="resubmit", attempt=2, indices=(1, 3), array="1,3"),
              JobEntry("1003", kind="backstop", depends_on=("1001", "1002"))),
        runner=Runner(4242, "node1", 1699999999.0), history=({"backend": "local", "jobs": [{"job_id": "900"}]},),
        resubmissions=({"at": 2.0, "indices": [1, 3], "job_ids": ["1002"], "attempt": 2},), cancelled_at=3.0,
    )


# ---------------------------------------------------------------------------- round trips
def test_manifest_round_trips_through_its_writer_and_reader(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path)
    write_manifest(tmp_path / "manifest.json", manifest)
    assert json.loads((tmp_path / "manifest.json").read_text())["version"] == 1
    back = load_manifest(tmp_path / "manifest.json")
    assert back == manifest
    assert back.entry(2) == ManifestEntry(2, "rt-e2", str(tmp_path / "rt-e2"))
    moved = Path("/elsewhere/rt-e1")  # the scratch root was moved: found by workflow id
    assert back.entry_for_context(moved) == ManifestEntry(1, "rt-e1", str(moved))
    with pytest.raises(RecordError, match=r"no element with index 3 \(the plan has 3\)"):
        back.entry(3)


def test_one_element_reads_only_its_own_manifest_entry_and_spec(tmp_path: Path, monkeypatch) -> None:
    """The manifest and elements.json are one JSON document each, one element per line, so a runner
    parses its own line only (json.loads never sees the others); a file laid out otherwise (an older
    mace-hpc's single line) or a line that is not that element's is read whole, as before."""
    from mace_hpc.records import manifest as manifest_mod

    manifest = _manifest(tmp_path)
    path, elements = tmp_path / "manifest.json", tmp_path / "elements.json"
    write_manifest(path, manifest)
    specs = [{"steps": [{"name": f"s{i}", "command": ["echo", "a\nb"]}]} for i in range(3)]
    manifest_mod.write_element_specs(elements, specs)
    assert json.loads(elements.read_text()) == specs and load_manifest(path) == manifest
    parsed: list[int] = []
    real_loads = manifest_mod.json.loads
    monkeypatch.setattr(manifest_mod.json, "loads", lambda b, *a, **k: parsed.append(len(b)) or real_loads(b, *a, **k))
    one = manifest_mod.load_manifest_for(path, 2)
    assert one.elements == (ManifestEntry(2, "rt-e2", str(tmp_path / "rt-e2")),) and one.entry(2) == manifest.entry(2)
    assert one.plan == manifest.plan and one.shared_database == manifest.shared_database
    assert max(parsed) < len(path.read_bytes()) - 100  # the head and one entry, never the whole file
    parsed.clear()
    assert manifest_mod.load_element_spec(elements, 1) == specs[1]
    assert parsed == [len(json.dumps(specs[1]))]  # that one line only
    monkeypatch.undo()
    # an older single-line layout: read whole, still right; a line that lies about its index: an error
    path.write_text(json.dumps(manifest.to_dict()))
    elements.write_text(json.dumps(specs))
    assert manifest_mod.load_manifest_for(path, 1).entry(1) == manifest.entry(1)
    assert manifest_mod.load_element_spec(elements, 2) == specs[2]
    write_manifest(path, manifest)
    path.write_bytes(path.read_bytes().replace(b'"index": 1,', b'"index": 7,'))
    with pytest.raises(RecordError, match="no element with index 1"):  # never another element's entry
        manifest_mod.load_manifest_for(path, 1).entry(1)


def test_submission_record_round_trips_through_its_writer_and_reader(tmp_path: Path) -> None:
    record = _record(tmp_path)
    write_record(tmp_path, record)
    data = json.loads(SubmissionPaths(tmp_path).record.read_text())
    assert data["version"] == 1 and data["runner"] == {"pid": 4242, "host": "node1", "started": 1699999999.0}
    assert data["jobs"][2] == {"job_id": "1003", "kind": "backstop", "depends_on": ["1001", "1002"]}
    assert load_record(SubmissionPaths(tmp_path).record) == record


def test_element_state_round_trips_and_keeps_a_history(tmp_path: Path) -> None:
    written = write_state(tmp_path, state=st.RUNNING, run_state=st.RUNNING, attempts=2, index=5,
                          workflow_id="p-e5", scheduler={"SLURM_JOB_ID": "7"}, steps=[{"name": "s"}])
    write_state(tmp_path, state=st.COMPLETED, run_state=st.COMPLETED, finished_at=10.0)
    back = read_state(tmp_path)
    assert back.state is State.COMPLETED and back.run_state is State.COMPLETED
    assert (back.attempts, back.index, back.workflow_id, back.scheduler, back.steps) == (
        2, 5, "p-e5", {"SLURM_JOB_ID": "7"}, [{"name": "s"}])
    assert [h[0] for h in back.history] == ["RUNNING", "COMPLETED"]
    assert read_state(tmp_path).to_dict() == back.to_dict() and written.attempts == 2
    with pytest.raises(TypeError, match=r"unknown state fields \['bogus'\]"):
        write_state(tmp_path, bogus=1)


def test_context_identity_round_trips(tmp_path: Path) -> None:
    identity = ContextIdentity("wf-1", "shared", 123.5, {"host": "h", "pid": 9})
    write_identity(tmp_path, identity)
    assert read_identity(tmp_path) == identity
    (tmp_path / "context.json").write_text('{"workflow_id": ')  # truncated
    assert read_identity(tmp_path) is None


# ---------------------------------------------------------------------------- unusable files
BAD_FILES = {
    "missing": (None, "is missing"),
    "truncated": ('{"plan": "x", "elem', "is truncated or not JSON"),
    "a JSON list": ("[1, 2]", "not a mace-hpc"),
    "missing keys": ('{"version": 1, "backend": "slurm"}', "not a mace-hpc"),
    "newer version": ('{"version": 2, "plan": "x", "elements": []}', "version 2 is newer than this mace-hpc reads (1)"),
}


@pytest.mark.parametrize("reader", [load_manifest, load_record], ids=["manifest", "record"])
@pytest.mark.parametrize("case", list(BAD_FILES))
def test_an_unusable_manifest_or_record_is_a_one_line_error_naming_the_file(tmp_path: Path, reader, case) -> None:
    text, needle = BAD_FILES[case]
    path = tmp_path / "file.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(RecordError) as err:
        reader(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and needle in message
    assert "\n" not in message
    assert err.value.exit_code == 2


def test_a_truncated_state_file_reads_as_pending_and_strictly_as_none(tmp_path: Path) -> None:
    assert read_state(tmp_path) == ElementState() and read_state_strict(tmp_path) == ElementState()  # absent
    write_state(tmp_path, state=st.RUNNING, attempts=3)
    full = (tmp_path / "state.json").read_text()
    (tmp_path / "state.json").write_text(full[: len(full) // 2])
    state = read_state(tmp_path)
    assert state.state == st.PENDING and state.attempts == 0
    assert read_state_strict(tmp_path) is None
    (tmp_path / "state.json").write_text('["RUNNING"]')  # foreign
    assert read_state(tmp_path).state == st.PENDING and read_state_strict(tmp_path) is None


def test_unknown_state_keys_survive_a_write(tmp_path: Path) -> None:
    """A newer mace-hpc's fields are carried along by an older writer, not dropped."""
    (tmp_path / "state.json").write_text(json.dumps(
        {"version": 1, "state": "RUNNING", "gpu_hours": 1.5, "future": {"a": [1]}, "run_state": "WEIRD"}))
    state = read_state(tmp_path)
    assert state.extra == {"gpu_hours": 1.5, "future": {"a": [1]}}
    assert state.run_state == "WEIRD"  # an unknown word is kept as it was written
    write_state(tmp_path, state=st.COMPLETED)
    data = json.loads((tmp_path / "state.json").read_text())
    assert data["gpu_hours"] == 1.5 and data["future"] == {"a": [1]} and data["state"] == "COMPLETED"
    assert read_state(tmp_path).extra == state.extra


# ---------------------------------------------------------------------------- jobs of a record
@pytest.mark.parametrize("query", ["123", "123_4", "123[].server", "123[4].server", " 123 "])
@pytest.mark.parametrize("job_id", ["123", "123[].server"])
def test_job_entry_matches_the_array_and_its_elements(job_id: str, query: str) -> None:
    assert JobEntry(job_id).matches(query)


@pytest.mark.parametrize("query", ["1234", "12", "12_3", "1123[].server", "plan"])
def test_job_entry_does_not_match_other_jobs(query: str) -> None:
    assert not JobEntry("123").matches(query)


def test_a_resubmission_supersedes_the_first_run_for_its_elements(tmp_path: Path) -> None:
    record = _record(tmp_path)
    current = {i: job.job_id for i, job in record.current_jobs().items()}
    assert current == {0: "1001", 1: "1002", 2: "1001", 3: "1002"}  # the backstop covers nothing
    assert [j.job_id for j in record.array_jobs()] == ["1001", "1002"]
    assert record.next_attempt() == 3
    later = record.with_jobs([JobEntry("1004", kind="resubmit", attempt=3, indices=(3,))])
    assert later.current_jobs()[3].job_id == "1004" and later.next_attempt() == 4
    assert [j.job_id for j in record.all_jobs()] == ["1001", "1002", "1003", "900"]  # earlier submissions too
    assert [j.job_id for j in record.without_jobs(["1002"]).jobs] == ["1001", "1003"]


# ---------------------------------------------------------------------------- State
def test_state_prints_as_its_name_in_f_strings_and_json() -> None:
    assert f"{State.MERGED}" == str(State.MERGED) == "MERGED"
    assert f"{State.KEPT:>6}|" == "  KEPT|"
    assert json.dumps({"state": State.PENDING_MERGE}) == '{"state": "PENDING_MERGE"}'
    assert State.TIMEOUT == "TIMEOUT" and State.parse("FAILED") is State.FAILED
    assert State.parse("NEWER_WORD") is None and State.parse(None, State.PENDING) is State.PENDING
    assert st.BAD_FINAL == {"FAILED", "TIMEOUT", "CANCELLED"} and st.ACTIVE == {"PENDING", "RUNNING"}


# ---------------------------------------------------------------------------- MACE_* environment
@pytest.mark.parametrize("value", [
    "plain value",
    "{context_dir}/x",
])
def test_element_env_is_what_dry_run_shows(tmp_path: Path, mace_env: dict[str, Path], capsys, value: str) -> None:
    """The runner exports element_env (test_element_run.py checks what a step sees); --dry-run must
    show the same values, `{context_dir}` resolved as the runner resolves it."""
    plan = write_plan(tmp_path, {"name": "envs", "isolation_mode": "isolated", "env": {"PLAN_VAR": "p"},
                                 "elements": [{"id": "a", "env": {"ELEM_VAR": value},
                                               "steps": [{"name": "s", "command": ["true"]}]}]})
    rc, out, err = cli(capsys, "submit", str(plan), "--dry-run", "--json")
    assert rc == 0, err
    [shown] = json.loads(out)["elements"]
    ctx = mace_env["scratch_root"] / "envs-a"
    resolved = value.replace("{context_dir}", str(ctx))
    expected = element_env("envs-a", "isolated", str(ctx), {"PLAN_VAR": "p", "ELEM_VAR": resolved})
    assert expected == {"MACE_WORKFLOW_ID": "envs-a", "MACE_ISOLATION_MODE": "isolated", "MACE_CONTEXT_DIR": str(ctx),
                        "PLAN_VAR": "p", "ELEM_VAR": resolved}
    assert shown["env"]["MACE_MANIFEST"] == str(mace_env["scratch_root"] / ".submissions" / "envs" / "manifest.json")
    assert {k: shown["env"][k] for k in expected} == expected
