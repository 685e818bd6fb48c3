"""The PBS job script: `#PBS` directives for both dialects, the pre-walltime USR2 watchdog, `exec`."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import InputError
from ..base import (
    array_spec,
    check_script_value,
)
from .dialect import (
    PATH_SAFE,
    PRE_TIMEOUT_SIGNAL,
    check_flavor,
    directive_value,
    format_walltime,
    pbspro_range,
    v_list,
)


# ---------------------------------------------------------------------------- job script
@dataclass
class JobSpec:
    """Everything a PBS job script says, already validated; rendered by `render_script`."""

    flavor: str
    name: str
    command: str  # one shell line, already quoted
    work_dir: Path
    log_stem: str
    task_ids: list[int] | None = None
    max_parallel: int | None = None
    queue: str | None = None
    account: str | None = None
    qos: str | None = None  # Torque with Moab only (`-l qos=`); PBS Pro has none
    time_min: int = 60
    cpus: int = 1
    mem: str | None = None
    gpus: int | None = None
    setup: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # -v; values must match V_SAFE or be index lists
    exports: list[str] = field(default_factory=list)  # extra `export K='v'` lines in the body
    dependency: str | None = None  # already translated
    requeue: bool = False
    signal_margin: int | None = None
    pbspro_throttle: bool = True
    index_offset: int | None = None


def _array_lines(spec: JobSpec) -> tuple[list[str], list[str]]:
    """(#PBS array directive lines, body lines) for the array part of the spec."""
    assert spec.task_ids is not None
    ids = sorted(set(spec.task_ids))
    throttle = spec.max_parallel if spec.max_parallel and spec.max_parallel < len(ids) else None
    body: list[str] = []
    if spec.flavor == "torque":
        return [f"#PBS -t {array_spec(ids, throttle)}"], body
    rng, exact = pbspro_range(ids)
    if throttle and spec.pbspro_throttle:
        rng += f"%{throttle}"
    directives = [f"#PBS -J {rng}"]
    if throttle and not spec.pbspro_throttle:
        body.append(f"# max_parallel={throttle} is NOT enforced: this PBS Pro predates -J range%N (OpenPBS 22.05)")
    if not exact:
        listed = array_spec(ids)
        spec.env["MACE_ARRAY_INDICES"] = listed
        body += [
            "# -J takes one range; subjobs the submission did not list exit 0 at once (see mace_hpc/schedulers/pbs/)",
            "mace_listed() {",
            "    local IFS=, r",
            "    for r in $MACE_ARRAY_INDICES; do",
            '        case $r in',
            '            *-*) [ "$1" -ge "${r%-*}" ] && [ "$1" -le "${r#*-}" ] && return 0 ;;',
            '            *) [ "$1" -eq "$r" ] && return 0 ;;',
            "        esac",
            "    done",
            "    return 1",
            "}",
            'mace_listed "$PBS_ARRAY_INDEX" || exit 0',
        ]
    return directives, body


def render_script(spec: JobSpec) -> str:
    """The job script: #PBS directives, cd, setup, exports, pre-timeout signal, `exec` command."""
    check_flavor(spec.flavor)
    work_dir = check_script_value(str(spec.work_dir), "work_dir")
    if not PATH_SAFE.fullmatch(work_dir):
        raise InputError(f"work_dir {work_dir!r} has characters PBS -o/-e paths cannot carry (':', ',', spaces)")
    lines = ["#!/bin/bash", f"#PBS -N {spec.name}"]
    if spec.queue:
        lines.append(f"#PBS -q {directive_value(spec.queue, 'partition')}")
    if spec.account:
        lines.append(f"#PBS -A {directive_value(spec.account, 'account')}")
    if spec.flavor == "pbspro":
        chunk = f"select=1:ncpus={int(spec.cpus)}"
        if spec.mem:
            chunk += f":mem={spec.mem}"
        if spec.gpus:
            chunk += f":ngpus={spec.gpus}"
        lines.append(f"#PBS -l {chunk}")
    else:
        nodes = f"nodes=1:ppn={int(spec.cpus)}" + (f":gpus={spec.gpus}" if spec.gpus else "")
        lines.append(f"#PBS -l {nodes}")
        if spec.mem:
            lines.append(f"#PBS -l mem={spec.mem}")
        if spec.qos:
            lines.append(f"#PBS -l qos={directive_value(spec.qos, 'qos')}")
    lines.append(f"#PBS -l walltime={format_walltime(spec.time_min)}")
    body: list[str] = []
    if spec.task_ids is not None:
        array_directives, body = _array_lines(spec)
        lines += array_directives
        if spec.flavor == "pbspro":  # ^array_index^ is expanded per subjob (PBS_FILE_ARRAY_INDEX_TAG)
            log = f"{work_dir}/{spec.log_stem}.^array_index^.log"
        else:  # a directory: Torque names each subjob's file <name>.o<seq>-<index>
            log = f"{work_dir}/"
    else:
        log = f"{work_dir}/{spec.log_stem}.log"
    lines += ["#PBS -j oe", f"#PBS -o {log}"]
    if spec.env:
        lines.append(f'#PBS -v "{v_list(spec.env)}"')
    if spec.dependency:
        lines.append(f"#PBS -W depend={spec.dependency}")
    if spec.requeue:
        lines.append("#PBS -r y")
    lines += ["", f"cd {shlex.quote(work_dir)} || exit 1"]
    if spec.setup:
        lines += ["", "# setup"] + list(spec.setup)
    lines.append("")
    if spec.index_offset is not None:
        lines.append(f"export MACE_INDEX_OFFSET={int(spec.index_offset)}")
    lines += spec.exports
    lines += body
    margin = spec.signal_margin
    if margin and spec.time_min * 60 > margin:
        # PBS has no --signal: a watchdog signals the element runner (which `exec` makes $$)
        # margin seconds before the walltime kill, so its epilogue runs (invariant 1, docs/architecture.md).
        lines.append(
            f"( sleep {spec.time_min * 60 - margin} && kill -s {PRE_TIMEOUT_SIGNAL} $$ ) >/dev/null 2>&1 &"
        )
    lines += [spec.command, ""]
    return "\n".join(lines)


