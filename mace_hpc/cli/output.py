"""Terminal output shared by the commands: tables, JSON, progress."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any


def print_json(obj: Any) -> None:
    # dumps + one write: json.dump writes every token separately (seconds for 10,000 status rows)
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


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
    """A one-line progress bar on stderr when it is a terminal, a line per 10% otherwise."""

    def __init__(self, label: str, stream: Any = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last_decile = -1

    def __call__(self, done: int, total: int, failed: int = 0) -> None:
        frac = done / total if total else 1.0
        extra = f", {failed} failed" if failed else ""
        if self.tty:
            bar = "#" * int(frac * 30)
            self.stream.write(f"\r{self.label} [{bar:<30}] {done}/{total}{extra}")
            if done >= total:
                self.stream.write("\n")
        elif int(frac * 10) != self._last_decile or done >= total:
            self._last_decile = int(frac * 10)
            self.stream.write(f"{self.label}: {done}/{total} done{extra}\n")
        self.stream.flush()
