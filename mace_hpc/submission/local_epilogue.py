"""The local backend's epilogue, in batches: `mace-submit` finalizes the elements it ran.

On a cluster each element's runner merges its own results (nothing else runs on that node). A
local run is one process that sees every element end, so it finalizes them itself, several per
shared-database lock and transaction (`finalize`, as `mace merge` does): per element that is one
fork, one lock round and one transaction less (~10 ms, most of a trivial element's overhead).
Results still come home while the run goes on (every `EVERY_S` seconds, or `BATCH` elements),
exactly once (the merge ledger), each element with its own policy, state and outcome; after a
cancel what ended and what was stopped are still finalized.

Only for plain policies (`deferrable`): merging is quick, an archive or an upload is not, and the
loop that runs this also starts elements and enforces their time limits. So while the run goes
on a busy shared database is waited for `LOCK_WAIT_S` only (the elements wait for the next batch);
the last batch waits as long as an element's own epilogue would. What this could not finalize
(`left`) is handed to `mace merge`'s path by `mace-submit`; if `mace-submit` itself is killed,
ended elements wait, COMPLETED, for `mace merge` (as after a lost epilogue on a cluster).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from ..config import Config, effective_cleanup_on_exit
from ..epilogue.finalize import Options, Target, finalize, target_from_manifest
from ..records import states as st
from ..records.manifest import Manifest
from .contexts import Submission

EVERY_S = 0.25
BATCH = 64
LOCK_WAIT_S = 2.0


def deferrable(sub: Submission, config: Config) -> bool:
    """May mace-submit finalize this plan's local elements in batches? Merge and keep only: no
    archive (slow, maybe an upload), no clean-up after archiving."""
    return (sub.on_complete == "merge" and sub.on_failure == "keep"
            and not (effective_cleanup_on_exit(config) and config["context_settings.archive_results"]))


class BatchedEpilogue:
    """The LocalBackend's `on_ended`: buffers ended elements, finalizes them in batches."""

    def __init__(self, submission: Submission, config: Config, every: float = EVERY_S, batch: int = BATCH) -> None:
        self.submission = submission
        self.config = config
        self.every = every
        self.batch = batch
        self.pending: list[tuple[int, int]] = []  # (element, runner exit code)
        self.left: list[int] = []  # not finalized here: `mace merge`'s
        self.last = time.monotonic()
        self._manifest: Manifest | None = None  # written after this is made: read at the first flush

    def __call__(self, ended: Sequence[tuple[int, int]], final: bool = False) -> None:
        self.pending.extend(ended)
        if self.pending and (final or len(self.pending) >= self.batch or time.monotonic() - self.last >= self.every):
            self.flush(final)

    def flush(self, final: bool = False) -> None:
        """Finalize what ended; never raises an Exception. Interrupted (a cancel), the batch is kept."""
        batch, self.pending, self.last = self.pending, [], time.monotonic()
        try:
            targets, codes = self._targets(batch)
            # their runners have exited: one that exited non-zero and left RUNNING died before recording its end
            died = {t.workflow_id: st.FAILED for t in targets if codes[t.index] != 0}
            opts = Options(ended=True, by="mace-submit", scheduler_states=died,
                           **({} if final else {"lock_timeout": LOCK_WAIT_S}))
            busy = [o.index for o in finalize(targets, opts) if o.state == st.PENDING_MERGE and o.index is not None]
            if busy and not final:  # the shared database was busy: the next batch tries again
                self.pending += [(i, codes[i]) for i in busy]
            elif busy:
                self.left += busy
        except BaseException as exc:
            if not isinstance(exc, Exception):
                self.pending[:0] = batch  # a cancel mid-batch: the final flush takes them again
                raise
            self.left += [i for i, _ in batch]
            print(f"mace-submit: finalizing elements {[i for i, _ in batch]}: {type(exc).__name__}: {exc}",
                  file=sys.stderr)

    def _targets(self, batch: list[tuple[int, int]]) -> tuple[list[Target], dict[int, int]]:
        manifest = self._manifest = self._manifest or self.submission.manifest()
        targets, codes = [], {}
        for index, code in batch:
            try:
                targets.append(target_from_manifest(manifest.entry(index), manifest, self.config))
                codes[index] = code
            except Exception as exc:  # noqa: BLE001 - this element only; the others go on
                self.left.append(index)
                print(f"mace-submit: element {index}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return targets, codes
