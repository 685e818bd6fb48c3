"""Layered configuration with provenance.

Precedence, lowest first: built-in defaults < site config YAML (`site-configs/`) <
`.mace_config.json` < `MACE_*` environment < command-line flags. Every value remembers where it
came from so `mace config show --explain` can answer "why is this set?". A bad value is a one-line
ConfigError naming the source, the key and what is allowed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .util.inputs import InputProblem, loads_json, loads_yaml, read_input_text
from .util.paths import usable_directory

DEFAULT_SIGNAL_MARGIN = 120  # s: `scheduler.signal_margin` when not set (effective_signal_margin caps it)

ISOLATION_MODES = ("shared", "isolated")
BACKENDS = ("local", "slurm", "pbs")
ON_COMPLETE = ("merge", "archive", "merge+archive", "keep")
ON_FAILURE = ("keep", "archive")
PBS_FLAVORS = ("pbspro", "torque")
CONFIG_FILE_NAME = ".mace_config.json"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError("true or false")


def _choice(*allowed: str) -> Callable[[Any], str]:
    def conv(value: Any) -> str:
        if isinstance(value, str) and value in allowed:
            return value
        raise ValueError(" | ".join(allowed))

    return conv


def _str(value: Any) -> str:
    if isinstance(value, str) and value and "\n" not in value:
        return value
    raise ValueError("a non-empty single-line string")


def _opt_str(value: Any) -> str | None:
    return None if value is None else _str(value)


S3_SCHEME = "s3://"
_URL_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://.*")
# S3 bucket naming rules (3-63 chars, lower case, digits, dots, hyphens; no leading/trailing dot or hyphen)
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_PREFIX_RE = re.compile(r"[A-Za-z0-9!_.*'()/+=@,:-]*")


def is_object_store_url(value: object) -> bool:
    """Whether an archive location names an object store (`s3://bucket/prefix`) rather than a directory."""
    return isinstance(value, str) and value.startswith(S3_SCHEME)


def _archive_dir(value: Any) -> str:
    """A directory, or `s3://bucket[/prefix]` with a valid bucket name and a plain prefix."""
    value = _str(value)
    if not _URL_RE.fullmatch(value):
        return value
    if not value.startswith(S3_SCHEME):
        raise ValueError("a directory or an s3://bucket/prefix URL (no other scheme)")
    bucket, _, prefix = value[len(S3_SCHEME):].partition("/")
    if not _BUCKET_RE.fullmatch(bucket) or ".." in bucket:
        raise ValueError(f"s3://BUCKET/prefix with a valid bucket name (3-63 of a-z 0-9 . -), not {bucket!r}")
    if not _PREFIX_RE.fullmatch(prefix) or any(p in (".", "..") for p in prefix.split("/")):
        raise ValueError("s3://bucket/PREFIX made of letters, digits and !_.*'()/+=@,:- (no . or .. parts)")
    return value


def _pos_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("a positive integer")
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError("a positive integer") from None
    if n <= 0 or (isinstance(value, float) and value != n):
        raise ValueError("a positive integer")
    return n


def _min_int(least: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        n = _pos_int(value) if not isinstance(value, bool) else -1
        if n < least:
            raise ValueError(f"an integer of at least {least}")
        return n

    return check


def _opt_pos_int(value: Any) -> int | None:
    return None if value is None else _pos_int(value)


def _pos_float(value: Any) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError("a positive number") from None
    if not x > 0 or isinstance(value, bool):
        raise ValueError("a positive number")
    return x


def _str_list(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list) and all(isinstance(v, str) and "\n" not in v for v in value):
        return list(value)
    raise ValueError("a list of single-line strings")


@dataclass(frozen=True)
class Key:
    """One configuration key: its dotted name, default, converter, help text and environment variable."""

    name: str
    default: Any
    convert: Callable[[Any], Any]
    help: str
    env: str | None = None


def _k(name: str, default: Any, convert: Callable[[Any], Any], help: str, env: str | None = None) -> Key:
    return Key(name, default, convert, help, env)


KEYS: dict[str, Key] = {
    k.name: k
    for k in [
        _k("isolation_mode", "shared", _choice(*ISOLATION_MODES), "shared database or one context per workflow", "MACE_ISOLATION_MODE"),
        _k("auto_cleanup", False, _bool, "remove a context when its workflow ends (after archiving)", "MACE_AUTO_CLEANUP"),
        _k("context_settings.cleanup_on_exit", None, lambda v: None if v is None else _bool(v), "per-context cleanup; unset: follow auto_cleanup", "MACE_CLEANUP_ON_EXIT"),
        _k("context_settings.archive_results", True, _bool, "archive a context before cleaning it up", "MACE_ARCHIVE_RESULTS"),
        _k("scratch_root", "~/.mace/contexts", _str, "where isolated context directories live ($VARS expanded)", "MACE_SCRATCH_ROOT"),
        _k("shared_database", "materials.db", _str, "the shared materials database (shared mode, merges)", "MACE_SHARED_DATABASE"),
        _k("archive_dir", "~/.mace/archives", _archive_dir, "where context archives (.tar.gz) go: a directory or s3://bucket/prefix", "MACE_ARCHIVE_DIR"),
        _k("archive_endpoint_url", None, _opt_str, "S3 API endpoint of an s3:// archive_dir (default: AWS_ENDPOINT_URL, else AWS)", "MACE_ARCHIVE_ENDPOINT_URL"),
        _k("archive_region", None, _opt_str, "region of an s3:// archive_dir (default: AWS_DEFAULT_REGION / the profile's)", "MACE_ARCHIVE_REGION"),
        _k("archive_profile", None, _opt_str, "AWS profile whose credentials reach an s3:// archive_dir (default: AWS_PROFILE / env keys)", "MACE_ARCHIVE_PROFILE"),
        _k("archive_part_size", 64, _min_int(5), "MiB per part when uploading an archive to s3:// (S3's minimum is 5)", "MACE_ARCHIVE_PART_SIZE"),
        _k("backend", "local", _choice(*BACKENDS), "scheduler backend for mace-submit", "MACE_BACKEND"),
        _k("max_parallel", 4, _pos_int, "array elements running at once (the %N throttle)", "MACE_MAX_PARALLEL"),
        _k("on_complete", "merge", _choice(*ON_COMPLETE), "what the epilogue does with a finished element", "MACE_ON_COMPLETE"),
        _k("on_failure", "keep", _choice(*ON_FAILURE), "what the epilogue does with a failed element", "MACE_ON_FAILURE"),
        _k("epilogue_deadline", 60.0, _pos_float, "seconds an epilogue may take before leaving a pending record", "MACE_EPILOGUE_DEADLINE"),
        _k("scheduler.partition", None, _opt_str, "SLURM partition / PBS queue"),
        _k("scheduler.account", None, _opt_str, "account to charge"),
        _k("scheduler.qos", None, _opt_str, "quality of service"),
        _k("scheduler.time", 60, _pos_int, "time limit per element, minutes"),
        _k("scheduler.cpus", 1, _pos_int, "cpus per element"),
        _k("scheduler.mem", None, _opt_str, "memory per element, e.g. 2G"),
        _k("scheduler.gres", None, _opt_str, "generic resources, e.g. gpu:1"),
        _k("scheduler.setup", [], _str_list, "shell lines run before the element (module load, venv)"),
        _k("scheduler.signal_margin", DEFAULT_SIGNAL_MARGIN, _pos_int, "seconds before the time limit at which the element is signalled"),
        _k("scheduler.requeue", False, _bool, "requeue a preempted or timed-out element into its context"),
        _k("scheduler.max_array_size", None, _opt_pos_int, "largest array per submission (default: ask the cluster)"),
        _k("scheduler.pbs_flavor", None, lambda v: None if v is None else _choice(*PBS_FLAVORS)(v), "pbspro | torque (default: detect)"),
        _k("scheduler.python", None, _opt_str, "python on the compute nodes (default: this interpreter)"),
    ]
}
SITE_ONLY_KEYS = {"name", "description"}


@dataclass
class Config:
    """Resolved configuration: `values[key]` plus `sources[key]` saying where it came from."""

    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    site_name: str | None = None

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def path(self, key: str) -> Path:
        """A path-valued key with `~` and `$VARS` expanded (`$USER` falls back to the login name)."""
        return expand_path(self.values[key])

    def set(self, key: str, value: Any, source: str) -> None:
        self.values[key] = convert(key, value, source)
        self.sources[key] = source

    def archive_dir(self) -> str | Path:
        """`archive_dir` resolved: an `s3://` URL as it is, a directory expanded and absolute."""
        return archive_location(self.values["archive_dir"]) or self.path("archive_dir").absolute()

    def scheduler(self) -> dict[str, Any]:
        return {k.split(".", 1)[1]: v for k, v in self.values.items() if k.startswith("scheduler.")}

    def as_dict(self) -> dict[str, Any]:
        return dict(self.values)


_VAR_RE = re.compile(r"\$(\w+)|\$\{(\w+)\}")


def expand_path(value: str) -> Path:
    """`~` and `$VAR`/`${VAR}` expanded; `$USER` falls back to the login name (batch jobs may lack it)."""

    def var(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name == "USER" and "USER" not in os.environ:
            import getpass

            return getpass.getuser()
        return os.environ.get(name, m.group(0))

    return Path(os.path.expanduser(_VAR_RE.sub(var, value)))


def archive_location(value: str | os.PathLike[str] | None) -> str | Path | None:
    """An archive location as recorded (manifest, config): an `s3://` URL stays a string (a Path
    would fold its `//`), a directory becomes an absolute Path with `~` and `$VARS` expanded."""
    if value is None or value == "":
        return None
    if is_object_store_url(value):
        return str(value)
    return expand_path(os.fspath(value)).absolute()


def resolve_scratch_root(cfg: Config, override: str | os.PathLike[str] | None = None) -> Path:
    """The scratch root: `override` (a `--scratch-root` flag) or the configured one, checked.

    Absolute, `~` expanded, a directory we can write to (or can create); a `$VAR` left
    unexpanded in the configured value is a ConfigError: `$SCRATCH/mace` on a machine without
    `$SCRATCH` would otherwise create a directory literally named `$SCRATCH`.
    """
    if override:
        return usable_directory(Path(override).expanduser(), "--scratch-root")
    path = cfg.path("scratch_root")
    source = cfg.sources.get("scratch_root", "default")
    if "$" in str(path):
        raise ConfigError(
            f"scratch_root: {cfg['scratch_root']!r} (from {source}) names an unset environment variable; "
            "set it or choose another scratch root (MACE_SCRATCH_ROOT)"
        )
    return usable_directory(path, "scratch_root", source)


def convert(key: str, value: Any, source: str) -> Any:
    spec = KEYS.get(key)
    if spec is None:
        known = ", ".join(sorted(KEYS))
        raise ConfigError(f"{source}: unknown key '{key}'; known keys: {known}")
    try:
        return spec.convert(value)
    except ValueError as exc:
        raise ConfigError(f"{source}: {key}={value!r} is invalid; allowed: {exc}") from None


def flatten(data: Mapping[str, Any], source: str, prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> dotted keys (`{"context_settings": {"archive_results": 1}}` -> dotted)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping) and any(key.startswith(name + ".") for key in KEYS):
            out.update(flatten(v, source, name + "."))
        else:
            out[name] = v
    return out


def site_search_path() -> list[Path]:
    dirs = []
    if os.environ.get("MACE_SITE_CONFIG_DIR"):
        dirs.append(Path(os.environ["MACE_SITE_CONFIG_DIR"]))
    dirs += [
        Path.cwd() / "site-configs",
        Path.home() / ".config" / "mace" / "sites",
        Path(__file__).resolve().parent.parent / "site-configs",
    ]
    return dirs


def find_site_config(site: str) -> Path:
    """A site name (`slurm-generic`) or a path to a YAML file -> the file."""
    candidate = Path(site).expanduser()
    if site.endswith((".yaml", ".yml")) or os.sep in site:
        if candidate.is_file():
            return candidate
        raise ConfigError(f"--site: no such site config file {site}")
    for d in site_search_path():
        for ext in (".yaml", ".yml"):
            p = d / f"{site}{ext}"
            if p.is_file():
                return p
    known = sorted({p.stem for d in site_search_path() if d.is_dir() for p in d.glob("*.y*ml")})
    raise ConfigError(f"--site: unknown site '{site}'; known sites: {', '.join(known) or 'none found'}")


def load_site_config(path: Path) -> dict[str, Any]:
    """A site YAML file (bounded, duplicate keys refused) -> dotted keys."""
    import yaml  # lazy: only sites with a YAML config pay for it

    source = f"site config {path}"
    text = read_input_text(path, source, ConfigError, "config file")
    try:
        data = loads_yaml(text)
    except InputProblem as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: malformed YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: must be a mapping of keys to values")
    return {k: v for k, v in flatten(data, source).items() if k not in SITE_ONLY_KEYS}


def load_json_config(path: Path) -> dict[str, Any]:
    """A `.mace_config.json` (bounded, duplicate keys refused) -> dotted keys."""
    source = f"{path}"
    text = read_input_text(path, source, ConfigError, "config file")
    try:
        data = loads_json(text)
    except ValueError as exc:
        raise ConfigError(f"{source}: malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: must be a JSON object")
    return flatten(data, source)


def config_file(environ: Mapping[str, str], cwd: Path | None = None) -> Path | None:
    """The JSON config file to read: `MACE_CONFIG` (which must exist), else `./.mace_config.json` if any.

    A `MACE_CONFIG` naming no file was silently ignored, so a typo ran with other settings.
    """
    named = environ.get("MACE_CONFIG")
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            what = "is not a file" if path.exists() else "does not exist"
            raise ConfigError(
                f"environment MACE_CONFIG={named!r}: {what}; point it at a JSON config file or unset it"
            )
        return path
    local = (cwd or Path.cwd()) / CONFIG_FILE_NAME
    return local if local.is_file() else None


def load_config(
    site: str | None = None,
    cli: Mapping[str, Any] | None = None,
    cwd: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Resolve every key through the layers; raises ConfigError on the first bad value."""
    environ = os.environ if environ is None else environ
    cfg = Config()
    for key, spec in KEYS.items():
        cfg.values[key] = spec.default
        cfg.sources[key] = "default"

    site = site or environ.get("MACE_SITE")
    if site:
        path = find_site_config(site)
        cfg.site_name = path.stem
        for key, value in load_site_config(path).items():
            cfg.set(key, value, f"site config {path}")

    json_path = config_file(environ, cwd)
    if json_path is not None:
        for key, value in load_json_config(json_path).items():
            cfg.set(key, value, str(json_path))

    for key, spec in KEYS.items():
        if spec.env and environ.get(spec.env) not in (None, ""):
            cfg.set(key, environ[spec.env], f"environment {spec.env}")

    for key, value in (cli or {}).items():
        if value is not None:
            cfg.set(key, value, f"command line --{key.split('.')[-1].replace('_', '-')}")
    return cfg


def effective_signal_margin(scheduler: Mapping[str, Any]) -> int:
    """Seconds before a job's time limit (`time`, minutes) at which its element is told to wrap up:
    `signal_margin`, or half the limit when the margin is not below it (a margin >= the limit would
    stop the element as soon as it started: `time: 1` with the default 120 left a packed element one
    second). One rule for every backend and for a packed element's own budget."""
    limit_s = int(scheduler.get("time") or 60) * 60
    margin_s = int(scheduler.get("signal_margin") or DEFAULT_SIGNAL_MARGIN)
    return margin_s if margin_s < limit_s else max(limit_s // 2, 1)


def effective_cleanup_on_exit(cfg: Config) -> bool:
    """`context_settings.cleanup_on_exit` when set, else `auto_cleanup`."""
    value = cfg["context_settings.cleanup_on_exit"]
    return cfg["auto_cleanup"] if value is None else bool(value)
