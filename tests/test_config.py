"""mace_hpc.config: the layers (defaults < site YAML < .mace_config.json < MACE_* env < command line),
the provenance of every value, one-line errors for bad values, and path expansion.

`environ=` is passed explicitly, so these tests see exactly the variables they set.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from mace_hpc.config import KEYS, effective_cleanup_on_exit, expand_path, load_config
from mace_hpc.errors import ConfigError


@pytest.fixture
def layers(tmp_path: Path) -> dict[str, object]:
    """A site YAML and a .mace_config.json that both set max_parallel and on_complete."""
    site = tmp_path / "site.yaml"
    site.write_text("name: mysite\ndescription: ignored\nmax_parallel: 2\non_complete: archive\n"
                    "scheduler:\n  time: 30\n  partition: debug\n")
    (tmp_path / ".mace_config.json").write_text(json.dumps(
        {"max_parallel": 3, "on_complete": "keep", "context_settings": {"archive_results": False}}))
    return {"site": str(site), "cwd": tmp_path, "json": str(tmp_path / ".mace_config.json")}


def test_defaults_come_from_the_key_table(tmp_path: Path) -> None:
    cfg = load_config(cwd=tmp_path, environ={})
    assert cfg.values == {k: spec.default for k, spec in KEYS.items()}
    assert set(cfg.sources.values()) == {"default"} and cfg.site_name is None
    assert cfg.scheduler()["time"] == 60 and cfg.scheduler()["setup"] == []
    assert "partition" in cfg.scheduler() and not any(k.startswith("scheduler.") for k in cfg.scheduler())


def test_each_layer_overrides_the_one_below_and_says_so(layers: dict[str, object]) -> None:
    cwd, site, json_path = layers["cwd"], layers["site"], layers["json"]
    cfg = load_config(site=site, cwd=cwd, environ={})
    assert (cfg["max_parallel"], cfg.sources["max_parallel"]) == (3, json_path)  # JSON over site
    assert (cfg["scheduler.time"], cfg.sources["scheduler.time"]) == (30, f"site config {site}")
    assert (cfg["context_settings.archive_results"], cfg.sources["context_settings.archive_results"]) == (
        False, json_path)  # nested JSON keys are flattened
    assert cfg.site_name == "site" and "name" not in cfg.values  # site-only keys are not settings
    assert (cfg["backend"], cfg.sources["backend"]) == ("local", "default")

    env = {"MACE_MAX_PARALLEL": "5", "MACE_ON_COMPLETE": "merge+archive", "MACE_BACKEND": ""}
    cfg = load_config(site=site, cwd=cwd, environ=env)
    assert (cfg["max_parallel"], cfg.sources["max_parallel"]) == (5, "environment MACE_MAX_PARALLEL")
    assert cfg["on_complete"] == "merge+archive"
    assert cfg.sources["backend"] == "default"  # an empty variable is unset

    cfg = load_config(site=site, cwd=cwd, environ=env, cli={"max_parallel": 7, "on_complete": None})
    assert (cfg["max_parallel"], cfg.sources["max_parallel"]) == (7, "command line --max-parallel")
    assert cfg.sources["on_complete"] == "environment MACE_ON_COMPLETE"  # None: the flag was not given


def test_site_and_json_file_are_found_through_the_environment(layers: dict[str, object], tmp_path: Path) -> None:
    elsewhere = tmp_path / "other.json"
    elsewhere.write_text('{"backend": "pbs"}')
    cfg = load_config(cwd=tmp_path / "nowhere", environ={"MACE_SITE": str(layers["site"]),
                                                         "MACE_CONFIG": str(elsewhere)})
    assert cfg.sources["scheduler.partition"] == f"site config {layers['site']}"
    assert (cfg["backend"], cfg.sources["backend"]) == ("pbs", str(elsewhere))
    assert cfg["max_parallel"] == 2  # MACE_CONFIG replaces the cwd's .mace_config.json


@pytest.mark.parametrize(("value", "expected"), [("yes", True), ("ON", True), ("0", False), ("off", False)])
def test_booleans_from_the_environment(tmp_path: Path, value: str, expected: bool) -> None:
    assert load_config(cwd=tmp_path, environ={"MACE_AUTO_CLEANUP": value})["auto_cleanup"] is expected


BAD = [
    ("site", "max_parallel: 0\n", "site config {site}: max_parallel=0 is invalid; allowed: a positive integer"),
    ("site", "backend: slurm\nscheduler:\n  partiton: debug\n",
     "site config {site}: unknown key 'scheduler.partiton'; known keys:"),
    ("json", '{"on_failure": "merge"}', "{json}: on_failure='merge' is invalid; allowed: keep | archive"),
    ("json", '{"max_parallel": ', "{json}: malformed JSON"),
    ("json", "[1]", "{json}: must be a JSON object"),
    ("env", "MACE_ISOLATION_MODE=isolatd",
     "environment MACE_ISOLATION_MODE: isolation_mode='isolatd' is invalid; allowed: shared | isolated"),
    ("env", "MACE_AUTO_CLEANUP=maybe", "environment MACE_AUTO_CLEANUP: auto_cleanup='maybe' is invalid; "
     "allowed: true or false"),
    ("env", "MACE_EPILOGUE_DEADLINE=-1",
     "environment MACE_EPILOGUE_DEADLINE: epilogue_deadline='-1' is invalid; allowed: a positive number"),
    ("cli", "max_parallel=2.5", "command line --max-parallel: max_parallel=2.5 is invalid; allowed: a positive integer"),
    ("cli", "backend=lsf", "command line --backend: backend='lsf' is invalid; allowed: local | slurm | pbs"),
]


@pytest.mark.parametrize(("layer", "text", "message"), BAD, ids=[f"{b[0]}:{b[1][:20]}" for b in BAD])
def test_a_bad_value_is_one_line_naming_source_key_and_allowed(tmp_path: Path, layer: str, text: str,
                                                               message: str) -> None:
    site, json_path = tmp_path / "s.yaml", tmp_path / ".mace_config.json"
    kwargs: dict[str, object] = {"cwd": tmp_path, "environ": {}}
    if layer == "site":
        site.write_text(text)
        kwargs["site"] = str(site)
    elif layer == "json":
        json_path.write_text(text)
    elif layer == "env":
        key, value = text.split("=")
        kwargs["environ"] = {key: value}
    else:
        key, value = text.split("=")
        kwargs["cli"] = {key: float(value) if key == "max_parallel" else value}
    with pytest.raises(ConfigError) as err:
        load_config(**kwargs)  # type: ignore[arg-type]
    assert str(err.value).startswith(message.format(site=site, json=json_path))
    assert "\n" not in str(err.value) and err.value.exit_code == 2


def test_unknown_site_name_lists_the_known_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "alpha.yaml").write_text("max_parallel: 2\n")
    monkeypatch.setenv("MACE_SITE_CONFIG_DIR", str(tmp_path))
    assert load_config(site="alpha", cwd=tmp_path, environ={}).site_name == "alpha"
    with pytest.raises(ConfigError, match=r"^--site: unknown site 'beta'; known sites: .*alpha"):
        load_config(site="beta", cwd=tmp_path, environ={})
    with pytest.raises(ConfigError, match=r"^--site: no such site config file /nope/x.yaml$"):
        load_config(site="/nope/x.yaml", cwd=tmp_path, environ={})


# the site configs shipped in site-configs/
@pytest.mark.parametrize(
    ("site", "expected"),
    [
        ("local", {"backend": "local", "max_parallel": 2, "scheduler.time": 60}),
        ("slurm-generic", {"backend": "slurm", "scheduler.requeue": True, "scheduler.signal_margin": 300,
                           "scheduler.mem": "2G", "scheduler.partition": None}),
        ("ci-slurm", {"backend": "slurm", "scheduler.partition": "debug", "scheduler.time": 5, "max_parallel": 4}),
    ],
)
def test_site_configs_load(site: str, expected: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCRATCH", "/scratch/u")
    monkeypatch.delenv("MACE_SCRATCH_ROOT")
    cfg = load_config(site=site)
    assert cfg.site_name == site
    for key, value in expected.items():
        assert cfg[key] == value, key
        if key != "scheduler.partition":
            assert cfg.sources[key].startswith("site config"), key
    assert "$" not in str(cfg.path("scratch_root"))
    if site == "slurm-generic":
        assert cfg.path("scratch_root") == Path("/scratch/u/mace/contexts")


@pytest.mark.parametrize(
    ("auto_cleanup", "cleanup_on_exit", "expected"),
    [("false", None, False), ("true", None, True), ("true", "false", False), ("false", "true", True)],
)
def test_effective_cleanup_on_exit_follows_auto_cleanup_unless_set(tmp_path: Path, auto_cleanup: str,
                                                                   cleanup_on_exit: str | None, expected: bool) -> None:
    environ = {"MACE_AUTO_CLEANUP": auto_cleanup}
    if cleanup_on_exit is not None:
        environ["MACE_CLEANUP_ON_EXIT"] = cleanup_on_exit
    assert effective_cleanup_on_exit(load_config(cwd=tmp_path, environ=environ)) is expected


def test_expand_path_expands_vars_and_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCR", "/scratch/me")
    monkeypatch.setenv("SUB", "runs")
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    assert expand_path("$SCR/mace/${SUB}/x") == Path("/scratch/me/mace/runs/x")
    assert expand_path("~/mace") == Path(os.path.expanduser("~")) / "mace"
    assert expand_path("$NOT_SET_ANYWHERE/x") == Path("$NOT_SET_ANYWHERE/x")  # left for the caller to refuse


def test_user_falls_back_to_the_login_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Batch jobs may run without $USER; `/scratch/$USER` must still mean the submitting user."""
    import getpass

    monkeypatch.delenv("USER", raising=False)
    assert expand_path("/scratch/$USER/mace") == Path(f"/scratch/{getpass.getuser()}/mace")
    cfg = load_config(cwd=tmp_path, environ={"MACE_SCRATCH_ROOT": "/scratch/${USER}"})
    assert cfg["scratch_root"] == "/scratch/${USER}"  # stored as given, expanded on use
    assert cfg.path("scratch_root") == Path(f"/scratch/{getpass.getuser()}")
