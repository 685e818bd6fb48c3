"""`mace report`: the report data (report_data.py) written as ONE self-contained HTML file.

Everything the page needs is inlined: the data as JSON, the page script, and uPlot (MIT, ~50 kB,
vendored in report_assets/ with its licence) for the charts. Its Content-Security-Policy forbids
every request, so it opens the same from a laptop without network as on the login node. The
page is drawn in the browser from the data, so no templating engine is needed: four markers in
report_assets/report.html are replaced, the data first escaped so it cannot close its script tag.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from ..util.atomic import atomic_write_text

ASSETS = Path(__file__).with_name("report_assets")


def render_html(data: dict[str, Any]) -> str:
    """The report page for `data` (from `build_report_data`)."""
    blob = json.dumps(data, separators=(",", ":"), default=str, allow_nan=False)
    blob = blob.replace("<", "\\u003c")  # inside <script>: no `</script>` or `<!--` can end it early
    parts = {
        "@@TITLE@@": html.escape(f"{data['plan']}: mace report"),
        "@@UPLOT_CSS@@": _asset("uPlot.min.css"),
        "@@UPLOT_JS@@": _asset("uPlot.iife.min.js"),
        "@@APP_JS@@": _asset("report.js"),
    }
    page = _asset("report.html")
    for marker, text in parts.items():
        page = page.replace(marker, text, 1)
    return page.replace("@@DATA@@", blob, 1)  # last: the data may contain a marker's text


def write_report(data: dict[str, Any], path: str | Path) -> Path:
    """Write the page atomically (a reader never sees half a report), 0600 like every file of ours."""
    return atomic_write_text(Path(path), render_html(data), fsync=False)  # 0600: scratch stays private


def _asset(name: str) -> str:
    return (ASSETS / name).read_text(encoding="utf-8")
