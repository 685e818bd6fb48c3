"""The local backend keeps no accounting of its own: every figure of the efficiency report comes
from what the element runner recorded in its state file (peak RSS and CPU time of its steps,
start and end), which `status/efficiency.py` reads for any element without a scheduler record.
A local run has no partition, so nothing caps a retry's escalation."""

from __future__ import annotations

from collections.abc import Mapping

from ...records.causes import Limits, Usage


class LocalAccounting:
    name = "local"
    calls = 0

    def usage(self, job_ids: list[str], offsets: Mapping[str, int] | None = None) -> dict[str, dict[int, Usage]]:
        return {str(j): {} for j in job_ids}

    def limits(self, partition: str | None) -> Limits:
        return Limits(name=partition)
