"""PBS backend: golden job scripts, qstat parsing of doc-format samples, the submitit plugin, and
end-to-end runs against the stateful fake qsub/qstat/qdel (tests/fakepbs) for both dialects."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mace_hpc.config import load_config
from mace_hpc.errors import ConfigError, InputError, SchedulerError
from mace_hpc.records.states import CANCELLED, COMPLETED, FAILED, PENDING, RUNNING, TIMEOUT
from mace_hpc.records.states import FINAL_RUN_STATES as FINAL_STATES
from mace_hpc.schedulers import pbs
from mace_hpc.schedulers.base import ArrayRequest, get_backend, is_listed, job_environment

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden"
FAKE = HERE / "fakepbs"
REPO = HERE.parent
FLAVORS = ["pbspro", "torque"]


# ------------------------------------------------------------------------------------ helpers
def _req(**kw) -> ArrayRequest:
    base = dict(
        name="sweep",
        indices=[0, 1, 2, 3, 4],
        max_parallel=2,
        command=["python3", "-m", "mace_hpc.element.run", "--manifest", "/scratch/mace/sub/manifest.json"],
        env={"MACE_MANIFEST": "/scratch/mace/sub/manifest.json", "MACE_ISOLATION_MODE": "isolated",
             "MACE_NOTE": "a b,c"},
        work_dir=Path("/scratch/mace/sub"),
        scheduler={"partition": "workq", "account": "proj42", "time": 90, "cpus": 2, "mem": "4G",
                   "setup": ["module load python/3.11"], "signal_margin": 120, "requeue": True},
        dependency=None,
    )
    base.update(kw)
    return ArrayRequest(**base)


GOLDEN_CASES = {
    "dense": {},
    "sparse_dep": {"indices": [101, 103, 107], "index_offset": 100, "dependency": "afterany:55[].server",
                   "scheduler": {"partition": "workq", "time": 30, "signal_margin": 60}},
    "single": {"indices": None, "name": "sweep-merge", "dependency": "afterany:55[].server",
               "scheduler": {"time": 20}},
}


@pytest.fixture
def modern_pbspro(monkeypatch):
    """Golden renders must not depend on whatever qstat is on this machine's PATH."""
    monkeypatch.setattr(pbs.dialect, "detect_flavor", lambda: ("pbspro", (22, 5, 11)))


@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
@pytest.mark.parametrize("flavor", FLAVORS)
def test_golden_job_script(flavor, case, modern_pbspro):
    text, argv = pbs.PbsBackend(flavor=flavor).render(_req(**GOLDEN_CASES[case]))
    path = GOLDEN / f"pbs_{flavor}_{case}.sh"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"regenerate with UPDATE_GOLDEN=1 and review {path}"
    assert argv[0] == "qsub" and argv[1].endswith(".pbs")


def test_rendered_details_both_dialects(modern_pbspro):
    pro, _ = pbs.PbsBackend(flavor="pbspro").render(_req())
    tq, _ = pbs.PbsBackend(flavor="torque").render(_req())
    assert "#PBS -J 0-4%2" in pro and "#PBS -t" not in pro
    assert "#PBS -t 0-4%2" in tq and "#PBS -J" not in tq
    assert "#PBS -l select=1:ncpus=2:mem=4gb" in pro and "#PBS -l nodes=1:ppn=2" in tq
    for text in (pro, tq):
        assert "#PBS -V" not in text and "#PBS -l walltime=01:30:00" in text and "#PBS -r y" in text
        assert "export MACE_NOTE='a b,c'" in text  # not -v: commas/spaces would need quoting
        assert text.rstrip().endswith("exec python3 -m mace_hpc.element.run --manifest /scratch/mace/sub/manifest.json")


def test_old_pbspro_gets_no_throttle_and_says_so(monkeypatch):
    monkeypatch.setattr(pbs.dialect, "detect_flavor", lambda: ("pbspro", (20, 0, 1)))
    text, _ = pbs.PbsBackend(flavor="pbspro").render(_req())
    assert "#PBS -J 0-4\n" in text and "max_parallel=2 is NOT enforced" in text


def test_values_that_would_break_a_directive_are_refused(modern_pbspro):
    backend = pbs.PbsBackend(flavor="pbspro")
    with pytest.raises(InputError):
        backend.render(_req(scheduler={"partition": "work q"}))
    with pytest.raises(InputError):
        backend.render(_req(env={"MACE_X": "a\nb"}))
    with pytest.raises(InputError):
        backend.render(_req(env={"PBS_O_WORKDIR": "/x"}))
    with pytest.raises(ConfigError, match="scheduler.qos"):
        backend.render(_req(scheduler={"qos": "high"}))
    with pytest.raises(ConfigError, match="scheduler.gres"):
        backend.render(_req(scheduler={"gres": "fpga:1"}))
    with pytest.raises(InputError):
        backend.render(_req(dependency="afterany:12; rm -rf /"))


@pytest.mark.parametrize("ids,expected", [
    ([0, 1, 2, 3, 4], ("0-4", True)),
    ([3, 7, 11], ("3-11:4", True)),
    ([1, 3], ("1-3:2", True)),
    ([3, 7, 12], ("3-12", False)),
    ([5], ("5-6", False)),
    ([0, 2, 4, 8], ("0-8:2", False)),
])
def test_pbspro_range_covers_sparse_lists(ids, expected):
    spec, exact = pbs.pbspro_range(ids)
    assert (spec, exact) == expected
    assert set(ids) <= set(pbs.covered_ids(spec))


@pytest.mark.parametrize("index,env,filler", [
    (1, {"MACE_ARRAY_INDICES": "0-2,5"}, False),  # inside a listed range (was split on commas: a filler)
    (3, {"MACE_ARRAY_INDICES": "0-2,5"}, True),
    (105, {"MACE_ARRAY_INDICES": "0-2,5", "MACE_INDEX_OFFSET": "100"}, False),  # task 5 of a chunk at 100
    (5, {"MACE_ARRAY_INDICES": "5", "MACE_INDEX_OFFSET": "100"}, True),  # element 5 is task -95 there
    (7, {}, False),  # a dense array lists nothing
])
def test_covering_range_fillers_from_the_job_environment(index, env, filler):
    assert job_environment(env).is_filler(index) is filler
    assert is_listed(5, 5)  # qstat -F json turns a lone index into a number


@pytest.mark.parametrize("text,seq,index,is_array,server", [
    ("123[].srv.example.org", "123", None, True, ".srv.example.org"),
    ("123[4].srv", "123", 4, True, ".srv"),
    ("123.srv", "123", None, False, ".srv"),
    ("123", "123", None, False, ""),
    ("123-4", "123", 4, True, ""),  # Torque < 2.3
    ("1098[0].hostname", "1098", 0, True, ".hostname"),  # Torque docs, multiJobSubmission
])
def test_parse_job_id(text, seq, index, is_array, server):
    jid = pbs.parse_job_id(text)
    assert (jid.seq, jid.index, jid.is_array, jid.server) == (seq, index, is_array, server)


@pytest.mark.parametrize("bad", ["", "abc", "12;rm", "12[x]", "[]"])
def test_parse_job_id_rejects(bad):
    with pytest.raises(InputError):
        pbs.parse_job_id(bad)


def test_dependency_translation():
    assert pbs.translate_dependency("afterany:55[].s", "pbspro") == "afterany:55[].s"
    assert pbs.translate_dependency("afterany:55[].s", "torque") == "afteranyarray:55[].s"
    assert pbs.translate_dependency("afterany:56.s", "torque") == "afterany:56.s"


@pytest.mark.parametrize("text,flavor,version", [
    ("pbs_version = 22.05.11\n", "pbspro", (22, 5, 11)),
    ("pbs_version = 19.1.3", "pbspro", (19, 1, 3)),
    ("Version: 6.1.3\nCommit: abc\n", "torque", (6, 1, 3)),
])
def test_flavor_detection_from_version_output(text, flavor, version):
    assert pbs.parse_version_output(text) == (flavor, version)


def test_unknown_flavor_is_a_config_error():
    with pytest.raises(ConfigError, match=r"scheduler\.pbs_flavor='sge'.*pbspro \| torque"):
        pbs.PbsBackend().render(_req(scheduler={"pbs_flavor": "sge"}))
    with pytest.raises(ConfigError, match="pbspro | torque"):
        pbs.PbsBackend(flavor="sge")


def test_get_backend_constructs_pbs_without_arguments():
    backend = get_backend("pbs")
    assert isinstance(backend, pbs.PbsBackend) and backend.name == "pbs"
    assert isinstance(get_backend("pbs", flavor="torque"), pbs.PbsBackend)


# ------------------------------------------------------------------------------------ qstat samples
def test_torque_doc_sample_parses():
    records = pbs.parse_qstat_text((GOLDEN / "qstat_torque_doc_job179.txt").read_text())
    job = records["179.host"]
    assert job["job_state"] == "C" and job["exit_status"] == "-1"
    assert job["Resource_List"] == {"ncpus": "2", "nodect": "1", "nodes": "node1"}
    assert job["Variable_List"]["PBS_O_WORKDIR"] == "/opt/moab"
    assert job["Variable_List"]["PBS_O_QUEUE"] == "batchq"
    assert job["sched_hint"].endswith("cannot find user 'user' in password file")
    assert pbs.normalize_pbs_state(job, "torque") == FAILED  # -1: JOB_EXEC_FAIL1


# captured from a real OpenPBS 23.06 (tests/golden/pbs_SOURCES.md): what `mace status` must make of them
REAL_SAMPLES = {
    "qstat_openpbs_array_running.json": {0: RUNNING, 1: RUNNING, **{i: PENDING for i in range(2, 10)}},
    "qstat_openpbs_envp_failed.json": {0: COMPLETED, 1: COMPLETED, 2: COMPLETED, 3: FAILED},
    # qdel: the running subjob 271 (its shell died of SIGTERM), the queued ones Exit_status 1, no exec_host
    "qstat_openpbs_cancelled.json": {0: CANCELLED, 1: CANCELLED, 2: CANCELLED},
    "qstat_openpbs_hardkill.json": {0: FAILED},  # runner SIGKILLed: 137 from the login shell; 1 is a filler
    "qstat_openpbs_sparse_resubmit.json": {3: COMPLETED},  # -J 3-4 for [3]: subjob 4 is a filler
    "qstat_openpbs_subjob_exit3.json": {1: FAILED},
    "qstat_openpbs_subjob_walltime.json": {0: TIMEOUT},  # Exit_status -29
}


@pytest.mark.parametrize("sample", sorted(REAL_SAMPLES))
def test_real_openpbs_samples_map_to_states(sample):
    records = pbs.parse_qstat_json((GOLDEN / sample).read_text())
    assert pbs.element_states(records, "pbspro") == REAL_SAMPLES[sample]


def test_real_text_and_json_formats_agree():
    """`qstat -f` text keeps -v values as strings; `-F json` turns 0 into a number: same states."""
    text = pbs.parse_qstat_text((GOLDEN / "qstat_openpbs_cancelled.txt").read_text())
    data = pbs.parse_qstat_json((GOLDEN / "qstat_openpbs_cancelled.json").read_text())
    assert pbs.element_states(text, "pbspro") == pbs.element_states(data, "pbspro") == {
        0: CANCELLED, 1: CANCELLED, 2: CANCELLED}
    assert text["43[].vm"]["Variable_List"]["MACE_INDEX_OFFSET"] == "0"
    assert data["43[].vm"]["Variable_List"]["MACE_INDEX_OFFSET"] == 0
    for key in ("MACE_MANIFEST", "PBS_O_PATH"):  # long values wrapped over continuation lines
        assert text["43[].vm"]["Variable_List"][key] == data["43[].vm"]["Variable_List"][key]


def test_sparse_fillers_are_not_elements():
    records = pbs.parse_qstat_json((GOLDEN / "qstat_openpbs_array_running.json").read_text())
    for rec in records.values():
        rec["Variable_List"]["MACE_ARRAY_INDICES"] = "0,2-3"
    assert sorted(pbs.element_states(records, "pbspro")) == [0, 2, 3]


@pytest.mark.parametrize("attrs,flavor,state", [
    ({"job_state": "H"}, "pbspro", PENDING),
    ({"job_state": "W"}, "pbspro", PENDING),
    ({"job_state": "E"}, "torque", RUNNING),
    ({"job_state": "C", "exit_status": "0"}, "torque", COMPLETED),
    ({"job_state": "C", "exit_status": "-11"}, "torque", TIMEOUT),
    ({"job_state": "F", "Exit_status": -11, "exec_host": "vm/0"}, "pbspro", FAILED),  # JOB_EXEC_RERUN in PBS Pro
    ({"job_state": "F", "Exit_status": 1}, "pbspro", CANCELLED),  # no exec_host: deleted before it ran
    ({"job_state": "X", "Exit_status": 271, "exec_host": "vm/0", "resources_used": {"walltime": "00:10:00"},
      "Resource_List": {"walltime": "00:10:00"}}, "pbspro", CANCELLED),  # PBS Pro says -29 for the walltime
    ({"job_state": "C", "exit_status": "271", "resources_used": {"walltime": "00:10:00"},
      "Resource_List": {"walltime": "00:10:00"}}, "torque", TIMEOUT),  # Torque: 271 for both
    ({"job_state": "C", "exit_status": "271"}, "torque", CANCELLED),
])
def test_state_table(attrs, flavor, state):
    assert pbs.normalize_pbs_state(attrs, flavor) == state


# ------------------------------------------------------------------------------------ site configs
@pytest.mark.parametrize("flavor", FLAVORS)
def test_site_configs_validate(flavor, monkeypatch, tmp_path):
    monkeypatch.setenv("SCRATCH", "/scratch")
    cfg = load_config(site=str(REPO / "site-configs" / f"{flavor}-generic.yaml"), cwd=tmp_path, environ={})
    sched = cfg.scheduler()
    assert cfg["backend"] == "pbs" and sched["pbs_flavor"] == flavor
    assert str(cfg.path("scratch_root")).startswith("/scratch/mace/")
    text, _ = pbs.PbsBackend().render(_req(scheduler=sched))
    assert ("#PBS -J" in text) == (flavor == "pbspro")


def test_user_jobscript_mentions_both_dialects():
    text = (REPO / "jobscripts" / "pbs-array.sh").read_text()
    assert "#PBS -J" in text and "##PBS -t" in text and "PBS_ARRAYID" in text and "PBS_ARRAY_INDEX" in text
    assert 'mace run-element "$MACE_MANIFEST"' in text and "#PBS -V" not in text


# ------------------------------------------------------------------------------------ fake on PATH
@pytest.fixture(params=FLAVORS)
def fakepbs(request, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{FAKE}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKEPBS_STATE", str(tmp_path / "fakepbs-state"))
    monkeypatch.setenv("FAKEPBS_FLAVOR", request.param)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    pbs.dialect._detect.cache_clear()
    yield request.param
    pbs.dialect._detect.cache_clear()
    # stop anything a test left running (the daemons exit once their job is final)
    state = tmp_path / "fakepbs-state" / "jobs"
    for f in state.glob("*.json") if state.exists() else []:
        job = json.loads(f.read_text())
        if job["state"] not in ("F", "C"):
            os.system(f"qdel '{job['seq']}[]' >/dev/null 2>&1" if job["array"] else f"qdel {job['seq']} >/dev/null 2>&1")


ELEMENT = r"""
import json, os, sys, time
idx = int(os.environ.get("PBS_ARRAY_INDEX") or os.environ["PBS_ARRAYID"]) + int(os.environ["MACE_INDEX_OFFSET"])
out = os.environ["OUT"]
run = os.path.join(out, "running"); os.makedirs(run, exist_ok=True)
open(os.path.join(run, str(idx)), "w").close()
seen = len(os.listdir(run))
time.sleep(float(os.environ.get("NAP", "0.4")))
os.unlink(os.path.join(run, str(idx)))
json.dump({"index": idx, "concurrent": seen, "injected": os.environ.get("INJECTED"),
           "jobid": os.environ["PBS_JOBID"], "workdir": os.environ["PBS_O_WORKDIR"], "cwd": os.getcwd()},
          open(os.path.join(out, f"{idx}.json"), "w"))
sys.exit(3 if str(idx) in os.environ.get("FAIL", "").split(",") else 0)
"""


def _e2e_req(tmp_path, indices, flavor, **kw):
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    element = tmp_path / "element.py"
    element.write_text(ELEMENT)
    env = {"OUT": str(out), "INJECTED": "hello", **kw.pop("env", {})}
    return ArrayRequest(
        name=kw.pop("name", "e2e"), indices=indices, max_parallel=kw.pop("max_parallel", 2),
        command=[sys.executable, str(element)], env=env, work_dir=tmp_path / "sub",
        scheduler={"time": 10, "signal_margin": 5, "pbs_flavor": flavor, **kw.pop("scheduler", {})}, **kw,
    )


def _wait(fn, what: str, limit: float = 60.0):
    """Poll until fn() is truthy (a safety net against hangs, not a timing assertion)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"gave up waiting for {what}")


def _final(backend, job_id, n):
    def check():
        states = backend.query([job_id])
        return states if len(states) == n and set(states.values()) <= set(FINAL_STATES) else None
    return _wait(check, f"{n} final states of {job_id}")


def test_array_runs_every_element_with_env_throttle_and_states(fakepbs, tmp_path):
    backend = pbs.PbsBackend()  # flavor from scheduler.pbs_flavor at submit, detected for query
    req = _e2e_req(tmp_path, [10, 11, 12, 13, 14], fakepbs, index_offset=10, env={"FAIL": "13"})
    job_id = backend.submit(req)
    assert pbs.parse_job_id(job_id).is_array
    states = _final(backend, job_id, 5)
    assert states == {10: COMPLETED, 11: COMPLETED, 12: COMPLETED, 13: FAILED, 14: COMPLETED}
    results = [json.loads((tmp_path / "out" / f"{i}.json").read_text()) for i in range(10, 15)]
    assert [r["index"] for r in results] == [10, 11, 12, 13, 14]
    assert {r["injected"] for r in results} == {"hello"}
    assert max(r["concurrent"] for r in results) <= 2  # the %2 throttle held
    assert {r["workdir"] for r in results} == {str(req.work_dir)}
    assert {r["cwd"] for r in results} == {str(req.work_dir.resolve())}  # the script cd's there
    assert results[0]["jobid"] == job_id.replace("[]", "[0]")
    assert (req.work_dir / "e2e@10.pbs").is_file()
    logs = list(req.work_dir.iterdir())
    assert len([p for p in logs if p.suffix != ".pbs"]) == 5  # one -j oe log per subjob


def test_sparse_resubmit_runs_only_listed_indices(fakepbs, tmp_path):
    backend = pbs.PbsBackend(flavor=fakepbs)
    job_id = backend.submit(_e2e_req(tmp_path, [1, 4], fakepbs, env={"NAP": "0"}))
    assert _final(backend, job_id, 2) == {1: COMPLETED, 4: COMPLETED}
    assert sorted(p.name for p in (tmp_path / "out").glob("*.json")) == ["1.json", "4.json"]


def test_cancel_marks_running_and_queued_elements_cancelled(fakepbs, tmp_path):
    backend = pbs.PbsBackend(flavor=fakepbs)
    job_id = backend.submit(_e2e_req(tmp_path, [0, 1, 2], fakepbs, max_parallel=1, env={"NAP": "60"}))
    _wait(lambda: RUNNING in backend.query([job_id]).values(), "a running element")
    backend.cancel([job_id])
    assert _final(backend, job_id, 3) == {0: CANCELLED, 1: CANCELLED, 2: CANCELLED}
    backend.cancel([job_id])  # already finished: not an error


def test_walltime_kill_is_timeout(fakepbs, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKEPBS_TIME_SCALE", "0.01")  # 1 minute of walltime = 0.6 s
    backend = pbs.PbsBackend(flavor=fakepbs)
    req = _e2e_req(tmp_path, [0, 1], fakepbs, env={"NAP": "30"}, scheduler={"time": 1, "signal_margin": 120})
    assert _final(backend, backend.submit(req), 2) == {0: TIMEOUT, 1: TIMEOUT}


def test_dependency_job_runs_after_the_whole_array(fakepbs, tmp_path):
    backend = pbs.PbsBackend(flavor=fakepbs)
    array_id = backend.submit(_e2e_req(tmp_path, [0, 1, 2], fakepbs, env={"NAP": "0.5"}))
    marker = tmp_path / "after.txt"
    code = ("import glob, os, sys; n = len(glob.glob(os.path.join(os.environ['OUT'], '[0-9]*.json')));"
            f"open({str(marker)!r}, 'w').write(str(n))")
    dep = ArrayRequest(name="merge", indices=None, max_parallel=1, command=[sys.executable, "-c", code],
                       env={"OUT": str(tmp_path / "out")}, work_dir=tmp_path / "sub",
                       scheduler={"time": 5, "pbs_flavor": fakepbs}, dependency=f"afterany:{array_id}")
    dep_id = backend.submit(dep)
    assert not pbs.parse_job_id(dep_id).is_array
    record = _wait(lambda: [r for r in backend.job_states([dep_id]).values()
                            if pbs.normalize_pbs_state(r, fakepbs) in FINAL_STATES], "the dependent job")
    assert pbs.normalize_pbs_state(record[0], fakepbs) == COMPLETED
    assert marker.read_text() == "3"
    assert backend.query([dep_id]) == {}  # a plain job is not an element


def test_bad_queue_is_a_scheduler_error_quoting_qsub(fakepbs, tmp_path):
    backend = pbs.PbsBackend(flavor=fakepbs)
    with pytest.raises(SchedulerError, match="Unknown queue") as exc:
        backend.submit(_e2e_req(tmp_path, [0, 1], fakepbs, scheduler={"partition": "nope"}))
    assert exc.value.exit_code == 2  # a refusal is bad input (errors.py); unreachable would be 3


def test_other_dialects_array_option_is_refused_by_the_fake(fakepbs, tmp_path):
    other = "torque" if fakepbs == "pbspro" else "pbspro"
    with pytest.raises(SchedulerError, match="invalid option"):
        pbs.PbsBackend(flavor=other).submit(_e2e_req(tmp_path, [0, 1], other))


def test_missing_qsub_is_scheduler_unavailable(tmp_path, monkeypatch):
    from mace_hpc.errors import SchedulerUnavailable

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SchedulerUnavailable) as exc:
        pbs.PbsBackend(flavor="pbspro").submit(_e2e_req(tmp_path, [0, 1], "pbspro"))
    assert exc.value.exit_code == 3


def test_max_array_size_from_server(fakepbs, monkeypatch):
    monkeypatch.setenv("FAKEPBS_MAX_ARRAY_SIZE", "500")
    assert pbs.PbsBackend(flavor=fakepbs).max_array_size() == 500
    assert pbs.PbsBackend(flavor=fakepbs, max_array_size=7).max_array_size() == 7


# ------------------------------------------------------------------------------------ submitit plugin
def test_plugin_is_registered_with_submitit():
    from submitit.core import plugins

    assert plugins.get_executors()["pbs"] is pbs.PbsExecutor
    assert isinstance(plugins.get_job_environments()["pbs"], pbs.PbsJobEnvironment)


def test_submitit_autoexecutor_runs_functions_through_the_fake(fakepbs, tmp_path):
    import submitit

    ex = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="pbs")
    assert isinstance(ex._executor, pbs.PbsExecutor)
    ex.update_parameters(timeout_min=5, pbs_array_parallelism=2)
    job = ex.submit(pow, 2, 5)
    assert job.result() == 32
    jobs = ex.map_array(pow, [2, 3, 4], [2, 2, 2])
    assert [j.result() for j in jobs] == [4, 9, 16]
    assert jobs[1].job_id == f"{jobs[0].job_id.split('_')[0]}_1"


# ------------------------------------------------------------------------------------ fake vs real server
SHAPE_KEYS = ("job_state", "Exit_status", "array_id", "array_index", "exec_host", "stime", "Resource_List",
              "resources_used", "Variable_List", "array", "array_state_count", "max_run_subjobs", "depend")


def _qstat_json(job_id: str) -> dict[str, dict]:
    proc = subprocess.run(["qstat", "-t", "-x", "-f", "-F", "json", job_id], capture_output=True, text=True, check=True)
    return pbs.parse_qstat_json(proc.stdout)


@pytest.mark.parametrize("fakepbs", ["pbspro"], indirect=True)
def test_fake_pbspro_records_agree_with_the_real_server(fakepbs, tmp_path):
    """What the fake keeps covering must look like tests/golden/qstat_openpbs_*.json (real 23.06)."""
    backend = pbs.PbsBackend(flavor="pbspro")
    job_id = backend.submit(_e2e_req(tmp_path, [0, 1, 2], "pbspro", max_parallel=1, env={"FAIL": "1", "NAP": "0.2"}))
    after = backend.submit(ArrayRequest(name="merge", indices=None, max_parallel=1, command=["true"], env={},
                                        work_dir=tmp_path / "sub", scheduler={"time": 5, "pbs_flavor": "pbspro"},
                                        dependency=f"afterany:{job_id}"))
    held = _qstat_json(after)[after]
    assert (held["job_state"], held["depend"]) == ("H", f"afterany:{job_id}@fakeserver")  # as the real one
    _final(backend, job_id, 3)
    _wait(lambda: _qstat_json(after)[after]["job_state"] == "F", "the dependent job")
    assert "depend" not in _qstat_json(after)[after]  # released: the real server drops it
    fake = _qstat_json(job_id)
    assert fake[job_id]["depend"] == f"beforeany:{after}@fakeserver"
    real = pbs.parse_qstat_json((GOLDEN / "qstat_openpbs_envp_failed.json").read_text())
    for fake_id, real_id in ((job_id, "35[].vm"), (job_id.replace("[]", "[0]"), "35[0].vm")):
        shape = {k: type(v) for k, v in real[real_id].items() if k in SHAPE_KEYS}
        assert {k: type(v) for k, v in fake[fake_id].items() if k in shape} == shape, fake_id
    # subjobs X while the array runs, F after; the parent's Exit_status is the class (0/1/2) of the
    # subjob that finished last, not an aggregate: here [2] (exit 0) ends after the failing [1]
    assert [fake[job_id.replace("[]", f"[{i}]")]["job_state"] for i in range(3)] == ["F"] * 3
    assert (fake[job_id]["job_state"], fake[job_id]["Exit_status"]) == ("F", 0)
    assert re.fullmatch(r"Queued:0 Running:0 Exiting:0 Expired:3", fake[job_id]["array_state_count"])
    assert fake[job_id]["Variable_List"]["MACE_INDEX_OFFSET"] == 0  # -F json made the number a number


@pytest.mark.parametrize("fakepbs", ["pbspro"], indirect=True)
def test_fake_refuses_dependencies_the_real_server_refuses(fakepbs, tmp_path):
    backend = pbs.PbsBackend(flavor="pbspro")
    array_id = backend.submit(_e2e_req(tmp_path, [0, 1], "pbspro", env={"NAP": "0"}))
    script = tmp_path / "after.sh"
    script.write_text("#!/bin/bash\ntrue\n")
    seq = pbs.parse_job_id(array_id).seq
    subjob = subprocess.run(["qsub", "-W", f"depend=afterany:{seq}[1].fakeserver", str(script)],
                            capture_output=True, text=True)
    assert (subjob.returncode, subjob.stderr.splitlines()[0]) == (2, "qsub: illegal -W value")  # no element-wise
    bare = subprocess.run(["qsub", "-W", f"depend=afterany:{seq}.fakeserver", str(script)],
                          capture_output=True, text=True, check=True).stdout.strip()
    record = _wait(lambda: _qstat_json(bare).get(bare, {}).get("job_state") == "F" and _qstat_json(bare)[bare],
                   "the server to delete the job")
    assert "exec_host" not in record  # accepted, then deleted without running (no [] on an array id)
    assert pbs.normalize_pbs_state(record, "pbspro") == CANCELLED
