"""Inside a local-backend element (or a process started by hand): the index comes from `--index`."""

from __future__ import annotations

from ...records import env as env_names
from ..jobenv import JobEnvironment


class LocalJobEnv(JobEnvironment):
    name = "local"
    detect_var = env_names.JOB_ID
    index_vars = ()
    id_vars = (env_names.JOB_ID,)
