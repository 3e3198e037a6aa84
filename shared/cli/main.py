"""`unikd`: the root command. Subcommands come from the `unikd.commands` entry-point group.

`shared/` may not import the cloud or edge sides, so each side registers its own commands
(`register(subparsers)`); an edge-only install simply shows fewer of them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import entry_points

from shared.errors import UnikdError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unikd",
        description="Federated UNI-KD: compress a time-series teacher into a small student for a "
                    "new domain whose data stays on the edge devices.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for ep in sorted(entry_points(group="unikd.commands"), key=lambda e: e.name):
        try:
            register = ep.load()
        except ImportError as exc:  # a side that is not installed on this device
            logging.getLogger(__name__).debug("command %s unavailable: %s", ep.name, exc)
            continue
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except UnikdError as err:
        print(f"unikd: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("unikd: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
