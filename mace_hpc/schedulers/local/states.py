"""The local backend has no scheduler to ask: its elements are known only through their state
files, so its state table is empty (every element reads from `records.element_state`)."""

from __future__ import annotations

from ...records.states import State

LOCAL_STATES: dict[str, State] = {}
