"""Multi-stage plans on the local backend: the (element, stage) scheduler, hand-off files, skips,
merge at the chain's end, resubmit from the failed stage, and bad stage input refused up front."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from real_cluster import peak_overlap

from mace_hpc.cli.main import run
from mace_hpc.util.atomic import read_json

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

# a step that records when it ran (inside its calculation directory) and fails if told to
PROBE = (
    "import json, os, sys, time; s = time.time(); time.sleep(float(sys.argv[1])); "
    "json.dump({'start': s, 'end': time.time(), 'stage': os.environ.get('MACE_STAGE')}, open('t.json', 'w')); "
    "sys.exit(int(sys.argv[2]) if len(sys.argv) > 2 and not os.path.exists(sys.argv[3]) else 0)"
)


def _probe(stage: str, nap: float, fail_unless: Path | None = None, **extra: Any) -> dict[str, Any]:
    argv = [sys.executable, "-c", PROBE, str(nap)] + (["3", str(fail_unless)] if fail_unless else [])
    return {"name": stage, "stage": stage, "command": argv, **extra}


def _plan(tmp_path: Path, name: str, stages: list[dict[str, Any]], elements: list[dict[str, Any]],
          **top: Any) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"name": name, "isolation_mode": "isolated", "stages": stages,
                                "elements": elements, **top}))
    return path


def _state(scratch: Path, wid: str) -> dict[str, Any]:
    return read_json(scratch / wid / "state.json") or {}


def _times(scratch: Path, wid: str, stage: str) -> dict[str, Any]:
    return json.loads((scratch / wid / "calculations" / stage / "t.json").read_text())


def test_stages_run_element_by_element(tmp_path: Path, mace_env: dict[str, Any]) -> None:
    """A fast element's later stages start before the slow element's first stage ends."""
    stages = [{"name": "a"}, {"name": "b"}, {"name": "c"}]
    elements = [{"id": f"e{i}", "steps": [_probe("a", 6 if i == 0 else 0.1), _probe("b", 0.1), _probe("c", 0.1)]}
                for i in range(2)]
    assert run(["submit", str(_plan(tmp_path, "loc", stages, elements, max_parallel=2))]) == 0
    scratch = mace_env["scratch_root"]
    spans = {(i, s): _times(scratch, f"loc-e{i}", s) for i in range(2) for s in ("a", "b", "c")}
    for i in range(2):  # each element's stages in order
        assert spans[(i, "a")]["end"] <= spans[(i, "b")]["start"] <= spans[(i, "b")]["end"] <= spans[(i, "c")]["start"]
    assert spans[(1, "c")]["end"] < spans[(0, "a")]["end"]  # element 1's whole chain ran meanwhile
    for i in range(2):
        state = _state(scratch, f"loc-e{i}")
        assert state["state"] == "MERGED" and state["run_state"] == "COMPLETED"
        assert [state["stages"][s]["state"] for s in ("a", "b", "c")] == ["COMPLETED"] * 3


def test_stage_cpus_count_against_the_cores(tmp_path: Path, mace_env: dict[str, Any]) -> None:
    """Stage `wide` asks for every core: nothing runs beside it, though max_parallel would allow it."""
    cores = len(os.sched_getaffinity(0))
    stages = [{"name": "a"}, {"name": "wide", "resources": {"cpus": cores}}]
    elements = [{"id": f"e{i}", "steps": [_probe("a", 0.5), _probe("wide", 0.5)]} for i in range(3)]
    assert run(["submit", str(_plan(tmp_path, "cores", stages, elements, max_parallel=4))]) == 0
    scratch = mace_env["scratch_root"]
    spans = {(i, s): _times(scratch, f"cores-e{i}", s) for i in range(3) for s in ("a", "wide")}
    for key, t in spans.items():
        if key[1] == "wide":
            beside = [(u["start"], u["end"]) for k, u in spans.items()
                      if k != key and u["start"] < t["end"] and u["end"] > t["start"]]
            assert beside == [], f"{key} shared the cores with {beside}"
    assert peak_overlap([(t["start"], t["end"]) for k, t in spans.items() if k[1] == "a"]) >= 2 or cores == 1


def test_handoff_files_optional_failure_and_skips(tmp_path: Path, mace_env: dict[str, Any], chromium: Any) -> None:
    write = "import os; open(os.path.join(os.environ['MACE_CONTEXT_DIR'], 'fort.9'), 'w').write('wave')"
    read = "import os, sys; sys.exit(0 if open(os.path.join(os.environ['MACE_CONTEXT_DIR'], 'fort.9')).read() == 'wave' else 4)"
    stages = [
        {"name": "opt", "outputs": ["fort.9"]},
        {"name": "band", "needs": ["opt"], "optional": True},
        {"name": "doss", "needs": ["opt"], "inputs": ["fort.9"]},
        {"name": "post", "needs": ["band"]},
    ]

    def steps(i: int) -> list[dict[str, Any]]:
        opt = [sys.executable, "-c", write if i != 1 else "pass"]  # element 1 writes no fort.9
        return [
            {"name": "opt", "stage": "opt", "command": opt},
            {"name": "band", "stage": "band", "command": [sys.executable, "-c", f"raise SystemExit({3 if i == 2 else 0})"]},
            {"name": "doss", "stage": "doss", "command": [sys.executable, "-c", read]},
            {"name": "post", "stage": "post", "command": ["true"]},
        ]

    plan = _plan(tmp_path, "hand", stages, [{"id": f"e{i}", "steps": steps(i)} for i in range(3)])
    assert run(["submit", str(plan)]) == 1  # element 1 failed
    scratch = mace_env["scratch_root"]
    ok, missing, optional = (_state(scratch, f"hand-e{i}") for i in range(3))
    assert ok["state"] == "MERGED"
    assert ok["stages"]["opt"]["outputs"] == {"fort.9": {"size": 4, "sha256": hashlib.sha256(b"wave").hexdigest()}}
    assert missing["run_state"] == "FAILED" and missing["state"] == "KEPT"
    assert missing["stages"]["opt"] == {**missing["stages"]["opt"], "state": "FAILED",
                                        "message": "outputs: fort.9 not written by stage opt"}
    assert {s: missing["stages"][s]["state"] for s in ("band", "doss", "post")} == dict.fromkeys(
        ("band", "doss", "post"), "SKIPPED")
    assert not (scratch / "hand-e1" / "calculations" / "doss").exists()  # skipped: nothing ran
    # an optional stage's failure is recorded; the chain goes on (post needs band) and the element completes
    assert optional["state"] == "MERGED" and optional["run_state"] == "COMPLETED"
    assert [optional["stages"][s]["state"] for s in ("opt", "band", "doss", "post")] == [
        "COMPLETED", "FAILED", "COMPLETED", "COMPLETED"]
    assert "optional stage(s) band did not complete" in optional["message"]
    with sqlite3.connect(mace_env["shared_database"]) as db:  # merged once each, when the chain ended
        merged = dict(db.execute("SELECT workflow_id, COUNT(*) FROM calculations GROUP BY 1").fetchall())
    assert merged == {"hand-e0": 4, "hand-e2": 4}
    # the report shows the stage view in a real browser: one row per stage with its counts
    assert run(["report", "hand", "-o", str(tmp_path / "hand.html")]) == 0
    page = chromium.load(tmp_path / "hand.html")
    assert not [c for c in page.console if "error" in c.lower()] and page.page_requests == []
    table = page.dom.split('id="stage-counts"')[1].split("</table>")[0]
    rows = {r.split("stage ", 1)[1].split("<", 1)[0]: r for r in table.split("<tr")[1:]}
    assert list(rows) == ["opt", "band", "doss", "post"]
    assert '<b>2</b> COMPLETED' in rows["opt"] and '<b>1</b> FAILED' in rows["opt"]
    assert '<b>1</b> SKIPPED' in rows["doss"] and '<b>2</b> COMPLETED' in rows["doss"]
    chromium.screenshot(tmp_path / "hand.html", tmp_path / "hand.png", height=1400)


def test_missing_input_fails_the_stage_before_it_runs(tmp_path: Path, mace_env: dict[str, Any]) -> None:
    stages = [{"name": "a"}, {"name": "b", "inputs": ["opt/fort.9"]}]
    plan = _plan(tmp_path, "inp", stages, [{"id": "x", "steps": [
        {"name": "a", "stage": "a", "command": ["true"]},
        {"name": "b", "stage": "b", "command": ["sh", "-c", "touch ran"]}]}])
    assert run(["submit", str(plan)]) == 1
    state = _state(mace_env["scratch_root"], "inp-x")
    assert state["stages"]["b"]["state"] == "FAILED"
    assert state["stages"]["b"]["message"].startswith("inputs: opt/fort.9 missing in ")
    assert not (mace_env["scratch_root"] / "inp-x" / "calculations" / "b" / "ran").exists()


def test_resubmit_reruns_from_the_failed_stage(tmp_path: Path, mace_env: dict[str, Any], capsys) -> None:
    fixed = tmp_path / "fixed"
    stages = [{"name": "a"}, {"name": "b"}, {"name": "c"}]
    elements = [{"id": f"e{i}", "steps": [_probe("a", 0), _probe("b", 0, fixed if i == 1 else None), _probe("c", 0)]}
                for i in range(2)]
    plan = _plan(tmp_path, "again", stages, elements)
    assert run(["submit", str(plan)]) == 1
    scratch = mace_env["scratch_root"]
    first_a = _times(scratch, "again-e1", "a")
    assert _state(scratch, "again-e1")["stages"]["c"]["state"] == "SKIPPED"
    fixed.touch()
    capsys.readouterr()
    assert run(["resubmit", "again", "--failed"]) == 0
    state = _state(scratch, "again-e1")
    assert state["state"] == "MERGED"
    assert {s: (v["state"], v["attempts"]) for s, v in state["stages"].items() if s != "c"} == {
        "a": ("COMPLETED", 1), "b": ("COMPLETED", 2)}
    assert _times(scratch, "again-e1", "a") == first_a  # stage a did not run again
    record = read_json(scratch / ".submissions" / "again" / "record.json")
    assert [(j["stage"], j["indices"]) for j in record["jobs"] if j["kind"] == "resubmit"] == [
        ("b", [1]), ("c", [1])]
    assert _state(scratch, "again-e0")["attempts"] == 1
    assert run(["status", "again"]) == 0
    out = capsys.readouterr().out
    assert "stage b: 2 COMPLETED" in out and "stage c: 2 COMPLETED" in out


def test_dry_run_shows_each_stage_and_its_dependency(tmp_path: Path, mace_env: dict[str, Any], capsys) -> None:
    stages = [{"name": "a"}, {"name": "b", "resources": {"cpus": 2, "time": 30}}]
    plan = _plan(tmp_path, "dry", stages, [{"id": "x", "steps": [_probe("a", 0), _probe("b", 0)]}])
    assert run(["submit", str(plan), "--dry-run", "--backend", "slurm"]) == 0
    out = capsys.readouterr().out
    assert "stage a: 1 array(s)" in out and "stage b: 1 array(s), after stage a element by element" in out
    assert "#SBATCH --cpus-per-task=2" in out and "MACE_STAGE=b" in out
    assert "#SBATCH --dependency='aftercorr:<job id of dry.a>'" in out
    assert not (mace_env["scratch_root"] / ".submissions" / "dry").exists()


@pytest.mark.parametrize("stages, steps_stage, message", [
    ([{"name": "a"}, {"name": "b", "needs": ["zz"]}], "a", "stages[1].needs[0]: 'zz' is not a stage of this plan"),
    ([{"name": "a", "needs": ["b"]}, {"name": "b"}], "a", "stages[0].needs: the stages form a cycle: a -> b -> a"),
    ([{"name": "a"}], None, "elements[0].steps[0].stage: is required when the plan declares stages"),
    ([{"name": "a", "inputs": ["../elsewhere/fort.9"]}], "a", "stages[0].inputs[0]: '../elsewhere/fort.9' escapes"),
    ([{"name": "a", "outputs": ["/etc/passwd"]}], "a", "stages[0].outputs[0]: '/etc/passwd' escapes"),
])
def test_bad_stages_refused_with_one_line(tmp_path: Path, mace_env: dict[str, Any], stages, steps_stage, message) -> None:
    step = {"name": "s", "command": ["true"], **({"stage": steps_stage} if steps_stage else {})}
    plan = _plan(tmp_path, "bad", stages, [{"id": "x", "steps": [step]}])
    proc = subprocess.run([str(BIN / "mace-submit"), str(plan)], capture_output=True, text=True,
                          env={**os.environ, "MACE_SCRATCH_ROOT": str(mace_env["scratch_root"])})
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not mace_env["scratch_root"].exists() or not any(mace_env["scratch_root"].iterdir())


def test_metals_chain_example_runs(tmp_path: Path, mace_env: dict[str, Any], capsys) -> None:
    """examples/metals_chain: relax -> eos, relax -> vacancy (optional) for seven metals, merged."""
    example = tmp_path / "metals_chain"
    subprocess.run(["cp", "-r", str(REPO / "examples" / "metals_chain"), str(example)], check=True)
    assert run(["submit", str(example / "plan.json")]) == 0
    out = capsys.readouterr().out
    assert "7 elements: 7 MERGED" in out and "stage vacancy: 7 COMPLETED" in out
    with sqlite3.connect(example / "results" / "metals_chain.db") as db:
        props = dict(db.execute("SELECT material_id || ':' || property_name, property_value FROM properties "
                                "WHERE property_name IN ('a0_relaxed_A', 'B_GPa')").fetchall())
    assert abs(props["Cu_fcc:a0_relaxed_A"] - 3.59) < 0.01 and 120 < props["Cu_fcc:B_GPa"] < 150


def test_retry_policy_restarts_a_staged_element_at_its_failed_stage(tmp_path: Path, mace_env: dict[str, Any]) -> None:
    """issue 10 on stages: a retryable named error in stage b is retried automatically from b;
    stage a (completed) does not run again, and the element is merged once at the end."""
    flaky = ("import os, sys; mark = os.path.join(os.environ['MACE_CONTEXT_DIR'], 'tried'); "
             "first = not os.path.exists(mark); open(mark, 'w').close(); "
             "print('SCF NOT CONVERGED' if first else 'ok'); sys.exit(1 if first else 0)")
    stages = [{"name": "a"}, {"name": "b"}, {"name": "c"}]
    plan = _plan(tmp_path, "stretry", stages, [{"id": "x", "steps": [
        _probe("a", 0), {"name": "b", "stage": "b", "command": [sys.executable, "-c", flaky]}, _probe("c", 0)]}],
        retry={"max_attempts": 2}, app_errors=[{"name": "scf", "pattern": "SCF NOT CONVERGED", "retryable": True}])
    assert run(["submit", str(plan)]) == 0
    scratch = mace_env["scratch_root"]
    state = _state(scratch, "stretry-x")
    assert state["state"] == "MERGED"
    assert {s: (v["state"], v["attempts"]) for s, v in state["stages"].items()} == {
        "a": ("COMPLETED", 1), "b": ("COMPLETED", 2), "c": ("COMPLETED", 1)}
    record = read_json(scratch / ".submissions" / "stretry" / "record.json")
    assert [(d["index"], d["cause"], d["action"]) for d in record["retries"]] == [(0, "APP_ERROR:scf", "retry")]
    assert [(j["stage"], j["kind"]) for j in record["jobs"] if j["kind"] != "backstop"] == [
        ("a", "array"), ("b", "array"), ("c", "array"), ("b", "resubmit"), ("c", "resubmit")]
    with sqlite3.connect(mace_env["shared_database"]) as db:
        rows = db.execute("SELECT status, COUNT(*) FROM calculations WHERE workflow_id = 'stretry-x' "
                          "GROUP BY 1").fetchall()
    assert dict(rows) == {"completed": 3, "failed": 1}


def test_a_runner_that_fails_before_recording_a_start_is_failed_not_pending(tmp_path: Path,
                                                                           mace_env: dict[str, Any]) -> None:
    """A local element whose runner exits before writing its state (here: a setup line exports a
    stage the plan does not have, which the runner refuses first) must not stay PENDING forever
    (`mace status --watch` would wait for it): the local backstop records it FAILED, naming the
    exit code and the logs."""
    plan = tmp_path / "early.json"
    plan.write_text(json.dumps({"name": "early", "isolation_mode": "isolated",
                                "resources": {"setup": ["export MACE_STAGE=bogus"]}, "elements": [
                                    {"id": "x", "steps": [{"name": "s", "command": ["true"]}]}]}))
    assert run(["submit", str(plan)]) == 1
    state = _state(mace_env["scratch_root"], "early-x")
    assert state["state"] in ("FAILED", "KEPT") and state["run_state"] == "FAILED"
    assert state["message"].startswith("the element runner exited with code 2 before it recorded a start; see its log")
