"""`python -m mace_hpc.element.function_step SPEC KWARGS_JSON [PATH...]`: one function step, in its own process.

A function step runs isolated from the element runner, like a command step: whatever it does
(`sys.exit`, KeyboardInterrupt, a signal to its own process, a segfault in a C extension) ends
this process only, and the runner records the step's outcome and finishes the element. The value
the function returns (a flat dict of numbers/strings) is merged into the step's `results.json`.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

from ..errors import InputError
from ..util.atomic import atomic_write_json
from .steps import RESULTS_FILE, flat_results, load_callable, read_results

EXIT_LOAD_ERROR = 127  # like a shell's "command not found": the function could not be loaded


def main(argv: list[str]) -> int:
    spec, kwargs_json, *search_path = argv
    try:
        fn = load_callable(spec, search_path)
    except InputError as exc:
        print(f"mace function step: {exc}", file=sys.stderr)
        return EXIT_LOAD_ERROR
    try:
        value = fn(**json.loads(kwargs_json))
    except SystemExit as exc:  # the function ended its process: its code is the step's exit code
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if code:
            print(f"mace function step: {spec} called sys.exit({exc.code!r})", file=sys.stderr)
        return code
    except BaseException:  # noqa: BLE001 - KeyboardInterrupt too: the step failed, the runner goes on
        traceback.print_exc()
        return 1
    work_dir = Path.cwd()
    results = {**read_results(work_dir), **flat_results(value)}
    if results:
        atomic_write_json(work_dir / RESULTS_FILE, results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
