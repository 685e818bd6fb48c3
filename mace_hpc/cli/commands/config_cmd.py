"""`mace config show [--explain] [--json]`: every value and where it came from."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="show the resolved configuration", description=__doc__)
    csub = p.add_subparsers(dest="config_command", metavar="ACTION")
    show = csub.add_parser("show", help="print each value (and with --explain its source)")
    show.add_argument("--site", help="site config name or YAML path")
    show.add_argument("--explain", action="store_true", help="say where each value came from")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(handler=_show)
    p.set_defaults(handler=lambda a: p.print_help() or 2)


def _show(args: argparse.Namespace) -> int:
    from ...config import KEYS, load_config
    from ..output import print_json, print_table

    cfg = load_config(site=args.site)
    if args.json:
        print_json({k: {"value": cfg.values[k], "source": cfg.sources[k]} for k in KEYS} if args.explain else cfg.values)
        return 0
    rows = [(k, cfg.values[k], cfg.sources[k]) if args.explain else (k, cfg.values[k]) for k in KEYS]
    print_table(("key", "value", "source") if args.explain else ("key", "value"), rows)
    return 0
