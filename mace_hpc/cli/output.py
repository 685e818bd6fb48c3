"""Terminal output shared by the commands: tables, JSON, progress."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any


def print_json(obj: Any, compact: bool = False) -> None:
    """One write (json.dump writes every token separately: seconds for 10,000 status rows).
    `compact`: one line. Otherwise a top-level object's keys one per line and a list under one of
    them one item per line: readable, greppable, and every line is C-encoded (`indent` would send
    everything through json's pure-Python encoder: half of `mace status --json` at 10,000 rows)."""
    sys.stdout.write((_one_line(obj) if compact else _by_line(obj)) + "\n")


def _one_line(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def _by_line(obj: Any) -> str:
    if not isinstance(obj, dict) or not obj:
        return _one_line(obj)
    lines = []
    for key, value in sorted(obj.items(), key=lambda kv: str(kv[0])):
        if isinstance(value, list) and value:
            value_text = "[\n" + ",\n".join("    " + _one_line(v) for v in value) + "\n  ]"
        else:
            value_text = _one_line(value)
        lines.append(f"  {json.dumps(str(key))}: {value_text}")
    return "{\n" + ",\n".join(lines) + "\n}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=False)).rstrip()
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in cells]
    return "\n".join(out)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    print(format_table(headers, rows))


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


class Progress:
    """Progress of a plan's elements on stderr, shared by `mace status --watch` and `mace-submit`.

    On a terminal: a live tqdm bar (done/total, rate and time left, then running / pending /
    failed); tqdm because it is small, pure Python, has no dependencies and has estimated rates
    for a decade. Elsewhere (a log, a pipe): a plain line per 10% and at the end, never a `\r`.
    """

    def __init__(self, label: str, stream: Any = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last_decile = -1
        self._bar: Any = None

    def __call__(self, done: int, total: int, failed: int = 0, running: int | None = None) -> None:
        parts = [f"{failed} failed"] if failed else []
        if running is not None:
            parts += [f"{running} running", f"{max(total - done - running, 0)} pending"]
        if self.tty:
            self._draw(done, total, ", ".join(parts))
            return
        if int((done / total if total else 1.0) * 10) != self._last_decile or done >= total:
            self._last_decile = int((done / total if total else 1.0) * 10)
            self.stream.write(f"{self.label}: {done}/{total} done{''.join(', ' + p for p in parts)}\n")
            self.stream.flush()

    def _draw(self, done: int, total: int, counts: str) -> None:
        from tqdm import tqdm

        if self._bar is None:  # `initial`: the rate counts what settles while we watch, not before
            cols, rows = _size(self.stream)  # a terminal that reports no size (a bare pty): 100 x 20
            self._bar = tqdm(total=total, initial=done, desc=self.label, file=self.stream, unit=" elements",
                             ncols=cols or 100, nrows=rows or 20, dynamic_ncols=bool(cols), bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} done "
                             "[{elapsed}<{remaining}, {rate_noinv_fmt}{postfix}]")
        self._bar.total = total
        self._bar.set_postfix_str(counts, refresh=False)
        self._bar.update(done - self._bar.n)
        if done >= total:
            self._bar.close()


def _size(stream: Any) -> tuple[int, int]:
    try:
        return tuple(os.get_terminal_size(stream.fileno()))  # type: ignore[return-value]
    except (OSError, ValueError, AttributeError):
        return 0, 0
