"""Error types whose message is shown to the user as one line, with a trustworthy exit code."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1  # the work ran and something in it failed (a step, a merge)
EXIT_INPUT = 2  # bad input: nothing was changed
EXIT_SCHEDULER = 3  # the scheduler refused or could not be reached


class MaceError(Exception):
    """Base class: an error we expect and can explain in one line (no traceback)."""

    exit_code = EXIT_FAILURE


class InputError(MaceError, ValueError):
    """Bad input from the user: a plan, a config value, a workflow id, a flag."""

    exit_code = EXIT_INPUT


class ConfigError(InputError):
    """A configuration value is invalid; the message names its source, key and allowed values."""


class PlanError(InputError):
    """A plan is invalid; the message names the field path, e.g. `elements[3].steps[0].command`."""


class SchedulerError(MaceError):
    """The scheduler refused a request; the message quotes the scheduler."""

    exit_code = EXIT_SCHEDULER
