"""Error types whose message is shown to the user as one line, with a trustworthy exit code."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1  # the work ran and something in it failed (a step, a merge)
EXIT_INPUT = 2  # bad input, including a request the scheduler refused: nothing was changed
EXIT_SCHEDULER = 3  # the scheduler could not be reached (not installed, not answering): retry later


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
    """The scheduler refused a request; the message quotes the scheduler.

    Exit 2 like other bad input: a refusal (bad partition, account, time limit) is fixed by
    changing the request, and submission has removed everything it created.
    """

    exit_code = EXIT_INPUT


class SchedulerUnavailable(SchedulerError):
    """The scheduler could not be asked at all (command missing, no answer): exit 3, try again later.

    Separate from a refusal so scripts can retry this one and not the other.
    """

    exit_code = EXIT_SCHEDULER


class StorageError(MaceError, OSError):
    """The object store refused a request (bad credentials, bucket missing, checksum mismatch): exit 2.

    An OSError too, so every caller that keeps a context when a local archive cannot be written
    (disk full) keeps it, and leaves the element pending, when an upload fails the same way.
    """

    exit_code = EXIT_INPUT


class StorageUnavailable(StorageError):
    """The object store could not be reached (endpoint down, timeout, 5xx): exit 3, try again later."""

    exit_code = EXIT_SCHEDULER
