"""The `chromium` fixture: Debian's headless chromium opening a file, as a user's browser would.

`.ci/run` installs it (`apt-get install -y chromium`); without it the browser tests fail in CI and
skip elsewhere (tests/real_cluster.py). Each call gets a fresh profile under the test's tmp directory.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from real_cluster import require

CI_MESSAGE = "chromium not installed: .ci/run should have installed it (apt-get install -y chromium)"
LOCAL_MESSAGE = "no chromium here: install it with `apt-get install -y chromium` to run the browser tests"
# quiet, offline, no first-run work: the flags the report probe used
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]
SELFTEST_RE = re.compile(r'<pre id="selftest">(.*?)</pre>', re.S)


@dataclass(frozen=True)
class PageLoad:
    """What one load of a page showed: the DOM after its scripts ran, chromium's console lines,
    and every network request the page itself started (from chromium's NetLog)."""

    dom: str
    console: list[str]
    page_requests: list[str]

    def selftest(self) -> dict:
        """The report's own self-test answer (`#selftest`), unescaped."""
        found = SELFTEST_RE.search(self.dom)
        assert found, f"the page wrote no self-test result; DOM starts {self.dom[:300]!r}"
        text = found.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
        return json.loads(text)


@dataclass(frozen=True)
class Chromium:
    exe: str
    work: Path

    def _run(self, url: str, name: str, *args: str) -> subprocess.CompletedProcess[str]:
        profile = self.work / f"profile-{name}"
        return subprocess.run([self.exe, *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000", *args, url],
                              capture_output=True, text=True, timeout=180)

    def load(self, page: Path, fragment: str = "selftest") -> PageLoad:
        """Open `page` (file://), let its scripts run, dump the DOM; log console and network."""
        netlog = self.work / f"{page.stem}-netlog.json"
        proc = self._run(f"{page.resolve().as_uri()}#{fragment}", page.stem + "-dom", "--dump-dom",
                         "--enable-logging=stderr", "--v=0", f"--log-net-log={netlog}")
        assert proc.returncode == 0, proc.stderr[-2000:]
        console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
        return PageLoad(proc.stdout, console, page_requests(netlog))

    def screenshot(self, page: Path, png: Path, height: int = 2800) -> Path:
        proc = self._run(page.resolve().as_uri(), page.stem + "-png", f"--screenshot={png}", f"--window-size=1400,{height}")
        assert proc.returncode == 0 and png.stat().st_size > 10_000, proc.stderr[-2000:]
        return png


def page_requests(netlog: Path) -> list[str]:
    """URLs of the network requests a file:// page started: chromium's own background requests
    (update checks) have no file:// isolation key, the page's own always do."""
    data = json.loads(netlog.read_text())
    start = data["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [e["params"]["url"] for e in data["events"] if e.get("type") == start
            and "file://" in str(e.get("params", {}).get("network_isolation_key", ""))]


@pytest.fixture
def chromium(tmp_path: Path) -> Chromium:
    """Headless chromium; fail in CI, skip elsewhere when it is not installed."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    found = require(Path(exe) if exe else "chromium not on PATH", CI_MESSAGE, LOCAL_MESSAGE)
    work = tmp_path / "browser"
    work.mkdir()
    return Chromium(str(found), work)
