"""mace-submit on a REAL OpenPBS server (started by .ci/pbs/start.sh in its own network namespace).

PBS Pro support is judged by PBS itself here; the fake (tests/fakepbs) keeps covering Torque.
Every scenario is submitted at once (module fixture) so they run concurrently; each test then
waits for its own plan and checks what the jobs wrote from inside (`seen.json`: MACE_*, plan and
element env, PBS_*, cwd, start/end) and what the epilogues recorded in the state files.

How the commands reach the server: PBS clients must run inside the server's namespace (PBS ignores
127.x, so the server lives on a TEST-NET address there), and PBS refuses root's jobs. So every
`mace-submit` / `mace` command runs exactly as a user would, inside the namespace as the job user:
`ip netns exec <ns> runuser -u pbsuser -- env -i ... mace ...`, with the job user's own python
(/opt/mace-pbs/venv, holding this checkout's mace_hpc) and a scratch directory that user owns.
Root (the test) only reads results and asks `qstat` for what PBS itself recorded.
"""

from __future__ import annotations

import filecmp
import json
import os
import pwd
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from real_cluster import peak_overlap, require

pytestmark = pytest.mark.pbs_real
REPO = Path(__file__).resolve().parent.parent
SERVER_ENV = Path("/run/mace-pbs/server.env")
CI_MESSAGE = "OpenPBS not running: .ci/run should have started it (bash .ci/pbs/start.sh)"
LOCAL_MESSAGE = "no OpenPBS here: start one with `bash .ci/pbs/start.sh` (root, builds it once)"
WAIT_S = 240

PROBE = r"""
import json, os, sys, time
start = time.time()
args = sys.argv[1:]
time.sleep(float(args[0]) if args else 0.0)
out = {"env": {k: v for k, v in os.environ.items() if k.startswith(("MACE_", "PLAN_", "ELEM_", "PBS_"))},
       "cwd": os.getcwd(), "start": start, "end": time.time()}
with open("seen.json.tmp", "w") as fh:
    json.dump(out, fh)
os.replace("seen.json.tmp", "seen.json")
with open("results.json", "w") as fh:
    json.dump({"score": float(os.environ["MACE_WORKFLOW_ID"].rsplit("-e", 1)[1])}, fh)
if len(args) > 1 and not os.path.exists(args[1]):
    sys.exit(3)  # fails until the test creates the file
"""
FAILING = (0, 1, 3)  # envp elements that fail until the test "fixes" them
FIRST_RUN = ["KEPT", "KEPT", "MERGED", "KEPT"]
KILL_RUNNER = "import os, signal; os.kill(os.getppid(), signal.SIGKILL)"


@dataclass(frozen=True)
class PbsServer:
    """The running server, as .ci/pbs/start.sh describes it in /run/mace-pbs/server.env."""

    netns: str
    user: str
    exec_dir: Path
    home: Path
    venv: Path
    host: str

    def root(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """A PBS command as root inside the namespace (root on the server host is a manager)."""
        return subprocess.run(["ip", "netns", "exec", self.netns, str(self.exec_dir / "bin" / argv[0]), *argv[1:]],
                              capture_output=True, text=True, timeout=timeout)

    def qstat(self, job_id: str) -> dict[str, dict[str, Any]]:
        """`qstat -t -x -f -F json ID`: what PBS itself recorded for the job (and its subjobs)."""
        proc = self.root("qstat", "-t", "-x", "-f", "-F", "json", job_id)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)["Jobs"]


def _venv_is_current(venv: Path) -> str | None:
    """Why the job user's copy of mace_hpc differs from this checkout, or None."""
    installed = next(venv.glob("lib/python3*/site-packages/mace_hpc"), None)
    if installed is None:
        return f"no mace_hpc in {venv}"
    for src in (REPO / "mace_hpc").rglob("*.py"):
        copy = installed / src.relative_to(REPO / "mace_hpc")
        if not copy.is_file() or not filecmp.cmp(src, copy, shallow=False):
            return f"{venv} holds an older mace_hpc ({src.relative_to(REPO)} differs): rerun bash .ci/pbs/start.sh"
    return None


def _probe() -> PbsServer | str:
    if not SERVER_ENV.is_file():
        return f"{SERVER_ENV} missing"
    if os.geteuid() != 0:
        return "entering the server's network namespace needs root"
    env = dict(line.split("=", 1) for line in SERVER_ENV.read_text().splitlines() if "=" in line)
    srv = PbsServer(env["MACE_PBS_NETNS"], env["MACE_PBS_USER"], Path(env["MACE_PBS_EXEC"]),
                    Path(env["MACE_PBS_HOME"]), Path(env["MACE_PBS_VENV"]), env["MACE_PBS_HOST"])
    try:
        server = srv.root("qstat", "-B", timeout=15)
        nodes = srv.root("pbsnodes", "-a", timeout=15)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"PBS did not answer: {exc}"
    if server.returncode != 0:
        return f"qstat -B failed: {(server.stderr or server.stdout).strip()[:200]}"
    if "state = free" not in nodes.stdout and "job-busy" not in nodes.stdout:
        return f"no usable node: {nodes.stdout.strip()[:200]!r}"
    return _venv_is_current(srv.venv) or srv


@pytest.fixture(scope="session")
def pbs_server() -> PbsServer:
    """The real OpenPBS server; fail in CI, skip elsewhere when it is not running."""
    return require(_probe(), CI_MESSAGE, LOCAL_MESSAGE)


# ---------------------------------------------------------------------------- running as the job user
@dataclass
class Run:
    srv: PbsServer
    root: Path  # owned by the job user
    results: dict[str, dict[str, Any]]

    @property
    def scratch(self) -> Path:
        return self.root / "scratch"

    def mace(self, *argv: str, program: str = "mace", timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """`mace ...` as the job user inside the namespace, with a clean login-like environment."""
        pw = pwd.getpwnam(self.srv.user)
        env = {"HOME": pw.pw_dir, "USER": pw.pw_name, "LOGNAME": pw.pw_name, "SHELL": "/bin/bash",
               "LANG": "C.UTF-8", "PATH": f"{self.srv.venv}/bin:{self.srv.exec_dir}/bin:/usr/bin:/bin",
               "MACE_SCRATCH_ROOT": str(self.scratch), "MACE_SHARED_DATABASE": str(self.root / "shared.db"),
               "MACE_ARCHIVE_DIR": str(self.root / "archives"), "MACE_CONFIG": str(self.root / "none.json")}
        argv_ = ["ip", "netns", "exec", self.srv.netns, "runuser", "-u", self.srv.user, "--", "env", "-i",
                 *(f"{k}={v}" for k, v in env.items()), str(self.srv.venv / "bin" / program), *argv]
        return subprocess.run(argv_, cwd=self.root, capture_output=True, text=True, timeout=timeout)

    def status(self, name: str) -> dict[str, Any]:
        proc = self.mace("status", name, "--json")
        assert proc.returncode in (0, 1), proc.stderr
        return json.loads(proc.stdout)

    def wait(self, name: str, until: Any = None, timeout: float = WAIT_S) -> dict[str, Any]:
        """Poll `mace status --json` until `until(report)`, else until every element settled and PBS
        has its final record (the state file can be final while the subjob is still exiting)."""
        end = time.monotonic() + timeout
        report: dict[str, Any] = {}
        while time.monotonic() < end:
            report = self.status(name)
            if until(report) if until else all(e["state"] in SETTLED and e["scheduler_state"] in FINAL
                                               for e in report["elements"]):
                return report
            time.sleep(1)
        pytest.fail(f"{name}: not done after {timeout}s: {[(e['workflow_id'], e['state']) for e in report.get('elements', [])]}")

    def state(self, wid: str) -> dict[str, Any]:
        path = self.scratch / wid / "state.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def seen(self, wid: str, step: str = "probe") -> dict[str, Any]:
        return json.loads((self.scratch / wid / "calculations" / step / "seen.json").read_text())

    def jobs(self, name: str) -> list[dict[str, Any]]:
        return json.loads((self.scratch / ".submissions" / name / "record.json").read_text())["jobs"]


SETTLED = {"MERGED", "KEPT", "ARCHIVED", "CANCELLED", "FAILED", "TIMEOUT", "QUARANTINED"}
FINAL = {"COMPLETED", "FAILED", "TIMEOUT", "CANCELLED"}


def _states(report: dict[str, Any]) -> list[str]:
    return [e["state"] for e in report["elements"]]


def _element(i: int, steps: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    return {"id": f"e{i}", "materials": [{"material_id": f"m{i}", "formula": "Al"}], "steps": steps, **kw}


def _probe_steps(python: str, probe: Path, nap: float = 0.0, extra: list[str] | None = None) -> list[dict[str, Any]]:
    return [{"name": "probe", "command": [python, str(probe), str(nap), *(extra or [])]}]


@pytest.fixture(scope="module")
def pbs_run(pbs_server: PbsServer) -> Iterator[Run]:
    """Write the plans into a directory the job user owns and submit them all (real qsub)."""
    root = Path(tempfile.mkdtemp(prefix="mace-pbs-real-", dir="/tmp"))
    pw = pwd.getpwnam(pbs_server.user)
    os.chmod(root, 0o755)
    (root / "none.json").write_text("{}")  # MACE_CONFIG must name a file (an empty config)
    run = Run(pbs_server, root, {})
    probe = root / "probe.py"
    probe.write_text(PROBE)
    python = str(pbs_server.venv / "bin" / "python")
    site = root / "site.yaml"
    site.write_text(yaml.safe_dump({"backend": "pbs", "max_parallel": 4, "scheduler": {
        "pbs_flavor": "pbspro", "partition": "workq", "time": 10, "signal_margin": 30}}))
    fixed = root / "fixed-marker"

    def plan(name: str, data: dict[str, Any]) -> Path:
        path = root / f"{name}.json"
        path.write_text(json.dumps({"name": name, "isolation_mode": "isolated", **data}))
        return path

    plans = {
        # 4 elements, 2 at once, 3 s each; 0, 1 and 3 fail until `fixed` exists, then are resubmitted:
        # [0, 1, 3] is no arithmetic range, so -J 0-3 goes out and subjob 2 must not run element 2 again
        "envp": plan("envp", {"max_parallel": 2, "env": {"PLAN_VAR": "plan value, with comma"}, "elements": [
            _element(i, _probe_steps(python, probe, 3, [str(fixed)] if i in FAILING else None),
                     env={"ELEM_VAR": f"elem {i}"}) for i in range(4)]}),
        # the watchdog's USR2 40 s before a 1-minute walltime: the runner records TIMEOUT, runs its epilogue
        "usr2": plan("usr2", {"resources": {"time": 1, "signal_margin": 40},
                              "elements": [_element(0, [{"name": "nap", "command": ["sleep", "300"]}])]}),
        # the walltime unannounced: the step first kills the job script's watchdog (its `sleep 30`:
        # 60 s walltime, 30 s margin), so PBS itself kills the job at the walltime (Exit_status -29)
        "wallkill": plan("wallkill", {"resources": {"time": 1, "signal_margin": 30}, "elements": [_element(0, [
            {"name": "nap", "command": ["sh", "-c", "pkill -u \"$(id -u)\" -xf 'sleep 30'; exec sleep 300"]}])]}),
        # the runner is killed hard: only the mom's epilogue (jobscripts/pbs-epilogue.sh) can finalize it
        "hardkill": plan("hardkill", {"elements": [_element(0, [{"name": "die", "command": [python, "-c", KILL_RUNNER]}])]}),
        # two stages chained as whole arrays (PBS has no element-wise array dependency): element 1's
        # first stage fails, so its second stage's subjob starts and the runner skips it
        "stages": plan("stages", {"max_parallel": 3, "stages": [{"name": "first"}, {"name": "second"}],
                                  "elements": [_element(i, [
                                      {**_probe_steps(python, probe, 1, [str(root / "never")] if i == 1 else None)[0],
                                       "name": "probe", "stage": "first"},
                                      {"name": "after", "stage": "second", "command": ["sh", "-c", "echo ran > after.txt"]},
                                  ], materials=[{"material_id": f"stage-m{i}", "formula": "Al"}]) for i in range(3)]}),
        # packed: 6 elements, 3 per subjob (pack: 3), so PBS runs a 2-subjob array
        "packed": plan("packed", {"pack": 3, "max_parallel": 2, "elements": [
            _element(i, _probe_steps(python, probe), materials=[{"material_id": f"pack-m{i}", "formula": "Al"}])
            for i in range(6)]}),
        # long sleepers, one at a time: cancelled by the test
        "cancelme": plan("cancelme", {"max_parallel": 1, "elements": [
            _element(i, [{"name": "nap", "command": ["sleep", "300"]}]) for i in range(3)]}),
    }
    os.chown(root, pw.pw_uid, pw.pw_gid)
    try:
        for name, path in plans.items():
            proc = run.mace(str(path), "--site", str(site), "--backend", "pbs", "--json", program="mace-submit")
            assert proc.returncode == 0, f"{name}: {proc.stderr}"
            run.results[name] = json.loads(proc.stdout)
            [backstop] = [j["job_id"] for j in run.jobs(name) if j["kind"] == "backstop"]
            run.results[name]["backstop_queued"] = pbs_server.qstat(backstop)[backstop]  # before it ran
        yield run
    finally:
        # whatever a failed test left queued (sleepers, backstops) must not outlive the module
        ids = [j["job_id"] for name in plans if (root / "scratch" / ".submissions" / name).is_dir()
               for j in run.jobs(name)]
        if ids:
            pbs_server.root("qdel", "-W", "force", *ids)
        if not os.environ.get("MACE_PBS_KEEP"):  # set it to look at what the jobs left
            shutil.rmtree(root, ignore_errors=True)


def _array_id(run: Run, name: str) -> str:
    [job] = [j["job_id"] for j in run.jobs(name) if j["kind"] == "array"]
    return job


def _pbs_time(text: str) -> float:
    return datetime.strptime(text, "%a %b %d %H:%M:%S %Y").timestamp()


# ---------------------------------------------------------------------------- env, throttle, backstop, resubmit
def test_array_ids_and_element_env_seen_from_inside(pbs_run: Run) -> None:
    report = pbs_run.wait("envp")
    array = _array_id(pbs_run, "envp")
    seq, _, server = array.partition("[]")
    assert server == f".{pbs_run.srv.host}"  # qsub printed `<seq>[].<server>`
    for i in range(4):
        env = pbs_run.seen(f"envp-e{i}")["env"]
        assert env["MACE_WORKFLOW_ID"] == f"envp-e{i}" and env["MACE_ISOLATION_MODE"] == "isolated"
        assert env["MACE_CONTEXT_DIR"] == str(pbs_run.scratch / f"envp-e{i}")
        assert env["MACE_MANIFEST"] == str(pbs_run.scratch / ".submissions" / "envp" / "manifest.json")
        assert env["PLAN_VAR"] == "plan value, with comma" and env["ELEM_VAR"] == f"elem {i}"
        assert env["PBS_ARRAY_INDEX"] == str(i) and env["MACE_INDEX_OFFSET"] == "0"
        assert env["PBS_JOBID"] == f"{seq}[{i}]{server}" and env["PBS_ARRAY_ID"] == array
        state = pbs_run.state(f"envp-e{i}")
        assert state["scheduler"]["PBS_JOBID"] == f"{seq}[{i}]{server}" and state["attempts"] == 1
    assert _states(report) == FIRST_RUN
    # -o <logs>/envp.^array_index^.log: PBS copied each subjob's output there when it ended
    logs = pbs_run.scratch / ".submissions" / "envp" / "logs"
    assert all((logs / f"envp.{i}.log").is_file() for i in range(4)), sorted(p.name for p in logs.iterdir())
    # `mace status` read the real `qstat -x -f -F json`: every subjob's final state
    assert [e["scheduler_state"] for e in report["elements"]] == ["FAILED", "FAILED", "COMPLETED", "FAILED"]
    subjobs = pbs_run.srv.qstat(array)
    assert [subjobs[f"{seq}[{i}]{server}"]["Exit_status"] for i in range(4)] == [1, 1, 0, 1]  # runner: 1 = failed


def test_throttle_never_more_than_max_parallel(pbs_run: Run) -> None:
    pbs_run.wait("envp")
    spans = [(pbs_run.seen(f"envp-e{i}")["start"], pbs_run.seen(f"envp-e{i}")["end"]) for i in range(4)]
    peak = peak_overlap(spans)
    assert peak == 2, f"max_parallel=2 (-J 0-3%2) but {peak} probes overlapped: {spans}"
    assert pbs_run.srv.qstat(_array_id(pbs_run, "envp"))[_array_id(pbs_run, "envp")]["max_run_subjobs"] == 2


def test_backstop_runs_once_after_the_array(pbs_run: Run) -> None:
    pbs_run.wait("envp")
    array = _array_id(pbs_run, "envp")
    [backstop] = [j for j in pbs_run.jobs("envp") if j["kind"] == "backstop"]
    queued = pbs_run.results["envp"]["backstop_queued"]
    # held on the whole array (qstat shows the server after `@`); once released the attribute is gone
    assert queued["job_state"] == "H" and queued["depend"] == f"afterany:{array}@{pbs_run.srv.host}"
    end = time.monotonic() + 60
    while (rec := pbs_run.srv.qstat(backstop["job_id"])[backstop["job_id"]])["job_state"] != "F":
        assert time.monotonic() < end, f"backstop {backstop['job_id']} still {rec['job_state']}"
        time.sleep(1)
    assert rec["Exit_status"] == 0 and rec["run_count"] == 1
    last_end = max(pbs_run.seen(f"envp-e{i}")["end"] for i in range(4))
    assert _pbs_time(rec["stime"]) >= int(last_end)  # stime has whole seconds


def test_failed_elements_resubmitted_as_a_sparse_array(pbs_run: Run) -> None:
    report = pbs_run.wait("envp")
    assert [e["run_state"] for e in report["elements"]] == ["FAILED", "FAILED", "COMPLETED", "FAILED"]
    assert "exit code 3" in report["elements"][3]["message"]
    (pbs_run.root / "fixed-marker").write_text("")
    proc = pbs_run.mace("resubmit", "envp", "--failed")
    assert proc.returncode == 0, proc.stderr
    [new_job] = proc.stdout.splitlines()[0].split()
    assert "resubmitted 3 element(s) of envp" in proc.stdout
    resub = [j for j in pbs_run.jobs("envp") if j["kind"] == "resubmit"]
    assert [(j["job_id"], j["indices"]) for j in resub] == [(new_job, list(FAILING))]
    report = pbs_run.wait("envp", until=lambda r: _states(r) == ["MERGED"] * 4)
    seq, _, server = new_job.partition("[]")
    for i in FAILING:
        assert report["elements"][i]["job_id"] == new_job
        state = pbs_run.state(f"envp-e{i}")
        assert state["attempts"] == 2 and state["scheduler"]["PBS_JOBID"] == f"{seq}[{i}]{server}"
        assert pbs_run.seen(f"envp-e{i}")["env"]["PBS_ARRAY_INDEX"] == str(i)  # the sparse array kept the index
    # -J takes one range: [0, 1, 3] went out as 0-3; subjob 2 exited 0 without running element 2 again
    assert pbs_run.state("envp-e2")["attempts"] == 1
    assert pbs_run.srv.qstat(new_job)[f"{seq}[2]{server}"]["Exit_status"] == 0
    # the resubmission's logs sit beside the first attempt's (PBS copied both back), not over them
    logs = pbs_run.scratch / ".submissions" / "envp" / "logs"
    wanted = {f"envp.{i}.log" for i in range(4)} | {f"envp.r2.{i}.log" for i in FAILING} | {"envp.pbs", "envp.r2.pbs"}
    deadline = time.monotonic() + 60  # PBS copies a subjob's output back after it ended, maybe after its merge
    while not wanted <= {p.name for p in logs.iterdir()} and time.monotonic() < deadline:
        time.sleep(0.5)
    assert wanted <= {p.name for p in logs.iterdir()}, sorted(p.name for p in logs.iterdir())
    # every element merged exactly once, whichever of runner, mom epilogue and backstop got there first
    conn = sqlite3.connect(pbs_run.root / "shared.db")
    rows = conn.execute("SELECT material_id, property_value FROM properties WHERE property_name='score' "
                        "AND material_id NOT LIKE 'stage-%' AND material_id NOT LIKE 'pack-%'").fetchall()
    assert sorted(rows) == [(f"m{i}", float(i)) for i in range(4)]
    assert conn.execute("SELECT COUNT(*) FROM merge_ledger WHERE workflow_id LIKE 'envp-%'").fetchone()[0] == 4


# ---------------------------------------------------------------------------- time limit
def test_watchdog_usr2_before_the_walltime(pbs_run: Run) -> None:
    report = pbs_run.wait("usr2", timeout=150)
    state = pbs_run.state("usr2-e0")
    assert state["run_state"] == "TIMEOUT" and state["state"] == "KEPT"
    assert 15 < state["finished_at"] - state["started_at"] < 45  # USR2 at 20 s, not the kill at 60 s
    assert (pbs_run.scratch / "usr2-e0" / "logs" / "epilogue.log").is_file()
    assert report["elements"][0]["state"] == "KEPT" and report["elements"][0]["run_state"] == "TIMEOUT"


def test_walltime_kill_is_exit_minus_29_and_timeout(pbs_run: Run) -> None:
    report = pbs_run.wait("wallkill", timeout=180)
    array = _array_id(pbs_run, "wallkill")
    sub = pbs_run.srv.qstat(array)[array.replace("[]", "[0]")]
    assert sub["Exit_status"] == -29  # JOB_EXEC_KILL_WALLTIME
    row = report["elements"][0]
    assert row["scheduler_state"] == "TIMEOUT", row  # what PBS says: killed at the walltime
    # the runner itself only saw the mom's SIGTERM (as on SLURM without --signal): it recorded a
    # cancellation and kept the context; only the watchdog (test above) lets it know it is the time
    assert (row["run_state"], row["state"]) == ("CANCELLED", "KEPT"), row


# ---------------------------------------------------------------------------- the mom's epilogue
def test_mom_epilogue_finalizes_a_runner_killed_hard(pbs_run: Run) -> None:
    epilogue = pbs_run.srv.home / "mom_priv" / "epilogue"
    assert "pbs-epilogue.sh" in epilogue.read_text() and epilogue.stat().st_mode & 0o777 == 0o700
    report = pbs_run.wait("hardkill", timeout=120)
    array = _array_id(pbs_run, "hardkill")
    sub = pbs_run.srv.qstat(array)[array.replace("[]", "[0]")]
    # the script runs under the user's login shell, which reports its child's SIGKILL as 128 + 9
    assert sub["Exit_status"] == 128 + 9
    state = pbs_run.state("hardkill-e0")
    # only the mom epilogue (root, 10 arguments, no job environment) could have done this
    assert state["epilogue"]["by"] == "mace epilogue", state
    assert state["run_state"] != "RUNNING" and report["elements"][0]["state"] in ("KEPT", "FAILED")
    log = (pbs_run.scratch / "hardkill-e0" / "logs" / "epilogue.log").read_text()
    assert "mace epilogue: runner gone while RUNNING" in log


# ---------------------------------------------------------------------------- cancel
def test_cancel_running_and_queued(pbs_run: Run) -> None:
    pbs_run.wait("cancelme", until=lambda r: r["elements"][0]["state"] == "RUNNING", timeout=120)
    proc = pbs_run.mace("cancel", "cancelme")
    assert proc.returncode == 0, proc.stderr
    assert "2 queued element(s) marked CANCELLED, 1 running element(s) signalled" in proc.stdout
    report = pbs_run.wait("cancelme", timeout=90)
    assert [e["run_state"] for e in report["elements"]] == ["CANCELLED"] * 3, report
    first = pbs_run.state("cancelme-e0")
    assert first["attempts"] == 1 and "epilogue" in first  # its runner got SIGTERM, recorded, ran the epilogue
    assert pbs_run.state("cancelme-e1").get("attempts", 0) == 0  # never started
    # the real qstat records: qdel'd while queued = Exit_status 1 and no exec_host; running = SIGTERM
    assert [e["scheduler_state"] for e in report["elements"]] == ["CANCELLED"] * 3, report
    array = _array_id(pbs_run, "cancelme")
    subjobs = pbs_run.srv.qstat(array)
    queued = subjobs[array.replace("[]", "[1]")]
    assert queued["Exit_status"] == 1 and "exec_host" not in queued


def test_stages_chain_whole_arrays_and_skip_failed_elements(pbs_run: Run) -> None:
    report = pbs_run.wait("stages")
    assert _states(report) == ["MERGED", "KEPT", "MERGED"]
    assert report["stages"] == {"first": {"COMPLETED": 2, "FAILED": 1}, "second": {"COMPLETED": 2, "SKIPPED": 1}}
    arrays = {j["stage"]: j for j in pbs_run.jobs("stages") if j["kind"] == "array"}
    first, second = arrays["first"]["job_id"], arrays["second"]["job_id"]
    assert arrays["second"]["depends_on"] == [first]
    rec = pbs_run.srv.qstat(second)[second]
    assert rec["Exit_status"] == 0  # the skipped element's runner ended at once, successfully
    for i in (0, 2):
        assert (pbs_run.scratch / f"stages-e{i}" / "calculations" / "after" / "after.txt").read_text() == "ran\n"
        assert pbs_run.seen(f"stages-e{i}")["env"]["MACE_STAGE"] == "first"
    assert not (pbs_run.scratch / "stages-e1" / "calculations" / "after").exists()
    skipped = pbs_run.state("stages-e1")["stages"]["second"]
    assert skipped["state"] == "SKIPPED" and skipped["message"].startswith("stage first FAILED")


# ---------------------------------------------------------------------------- packing
def test_packed_plan_runs_three_elements_per_subjob(pbs_run: Run) -> None:
    """`pack: 3` on PBS: a 2-subjob array, each subjob running its 3 consecutive elements, each with
    its own context, environment, state and merge."""
    report = pbs_run.wait("packed")
    assert _states(report) == ["MERGED"] * 6
    array = _array_id(pbs_run, "packed")
    seq, _, server = array.partition("[]")
    subjobs = {k for k in pbs_run.srv.qstat(array) if k != array}
    assert subjobs == {f"{seq}[{t}]{server}" for t in range(2)}
    for i in range(6):
        env = pbs_run.seen(f"packed-e{i}")["env"]
        assert env["MACE_WORKFLOW_ID"] == f"packed-e{i}" and env["PBS_ARRAY_INDEX"] == str(i // 3)
        assert env["MACE_CONTEXT_DIR"] == str(pbs_run.scratch / f"packed-e{i}")
        state = pbs_run.state(f"packed-e{i}")
        assert state["index"] == i and state["epilogue"]["merge"]["counts"]["materials"] == 1
    with sqlite3.connect(pbs_run.root / "shared.db") as conn:
        got = sorted(r[0] for r in conn.execute("SELECT material_id FROM materials WHERE material_id LIKE 'pack-%'"))
    assert got == [f"pack-m{i}" for i in range(6)]
