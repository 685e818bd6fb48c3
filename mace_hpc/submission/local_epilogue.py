"""The local backend's epilogue, in batches: `mace-submit` finalizes the elements it ran.

On a cluster each element's runner merges its own results (nothing else runs on that node). A
local run is one process that sees every element end, so it finalizes them itself, several per
shared-database lock and transaction (`finalize`, as `mace merge` does): per element that is one
fork, one lock round and one transaction less (~10 ms, most of a trivial element's overhead).
Results still come home while the run goes on (every `EVERY_S` seconds, or `BATCH` elements),
exactly once (the merge ledger), each element with its own policy, state and outcome; after a
cancel what ended is still finalized. Only if `mace-submit` itself is killed do ended elements
wait, COMPLETED, for `mace merge` (as after a lost epilogue on a cluster).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from ..config import Config
from ..epilogue.finalize import Options, finalize, target_from_manifest
from ..records.manifest import Manifest
from .contexts import Submission

EVERY_S = 0.25
BATCH = 64


class BatchedEpilogue:
    """The LocalBackend's `on_ended`: buffers ended elements, finalizes them in batches."""

    def __init__(self, submission: Submission, config: Config, every: float = EVERY_S, batch: int = BATCH) -> None:
        self.submission = submission
        self._manifest: Manifest | None = None  # written after this is made: read at the first flush
        self.config = config
        self.every = every
        self.batch = batch
        self.pending: list[int] = []
        self.last = time.monotonic()
        self.finalized: list[int] = []

    def __call__(self, ended: Sequence[int], final: bool = False) -> None:
        self.pending.extend(ended)
        if not self.pending:
            return
        if final or len(self.pending) >= self.batch or time.monotonic() - self.last >= self.every:
            self.flush()

    def flush(self) -> None:
        """Finalize what ended; never raises (an element left COMPLETED is `mace merge`'s)."""
        indices, self.pending, self.last = self.pending, [], time.monotonic()
        try:
            manifest = self._manifest = self._manifest or self.submission.manifest()
            targets = [target_from_manifest(manifest.entry(i), manifest, self.config) for i in indices]
            # ended: their runners have exited, so a RUNNING state means one died before recording its end
            finalize(targets, Options(ended=True, by="mace-submit"))
            self.finalized += indices
        except Exception as exc:  # noqa: BLE001 - the run goes on; the backstop merge retries
            print(f"mace-submit: finalizing elements {indices}: {type(exc).__name__}: {exc}; "
                  f"`mace merge {self.submission.name}` finishes it", file=sys.stderr)
