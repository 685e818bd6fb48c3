"""Workflow contexts: one workflow's private directory, database and environment
(`workflow_context.py`), the cross-process registry of active ones (`registry.py`), and archiving
and restoring a context (`archive.py`)."""
