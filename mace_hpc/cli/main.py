"""`mace`, `mace-submit`, `mace-epilogue`: thin CLI over the library.

Each sub-command lives in `commands/<name>.py` with `register(subparsers)`; handlers import the
heavy modules lazily so `mace --help` stays fast. Errors we expect (MaceError) print one line and
exit with their code (2 for bad input or a scheduler refusal, 3 when the scheduler cannot be
reached); never a traceback for bad input.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__

COMMANDS = ("workflow", "submit", "run_element", "status", "cancel", "resubmit", "merge", "epilogue",
            "contexts", "cleanup", "config_cmd", "report")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's usage errors: one line, exit 2
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mace",
        description="Isolated MACE materials workflows on SLURM/PBS job arrays, every result brought home once.",
    )
    parser.add_argument("--version", action="version", version=f"mace-hpc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f".commands.{name}", __package__)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.endswith(f"commands.{name}"):
                continue  # a command not built yet is simply absent
            raise
        module.register(sub)
    return parser


def run(argv: list[str], parser: argparse.ArgumentParser | None = None) -> int:
    from ..errors import MaceError

    parser = parser or build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except MaceError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as exc:  # the machine's problem (disk full, permissions): one line, not a traceback
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"{parser.prog}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    return run(sys.argv[1:] if argv is None else argv)


def submit_main(argv: list[str] | None = None) -> int:
    """`mace-submit ...` is `mace submit ...`."""
    return run(["submit", *(sys.argv[1:] if argv is None else argv)])


def epilogue_main(argv: list[str] | None = None) -> int:
    """`mace-epilogue ...` is `mace epilogue ...`, but exits 0 even on a usage error: it is a hook."""
    try:
        run(["epilogue", *(sys.argv[1:] if argv is None else argv)])
    except SystemExit:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
