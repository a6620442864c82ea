"""``python -m fitkit.train {gmm,vposer,cnf,...} --out PATH ...``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from fitkit.train import COMMAND_MODULES, COMMANDS

PROG = "python -m fitkit.train"


def build_parser() -> argparse.ArgumentParser:
    """The CLI parser with one subparser per registered command."""
    for module in COMMAND_MODULES:
        importlib.import_module(module)
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS.values():
        command.configure(sub.add_parser(command.name, help=command.help,
                                         description=command.help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; returns the exit code: 0, or 2 with a
    one-line message naming the command for a missing file or a bad value (a checkpoint that
    cannot be resumed, settings that differ from the run's)."""
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command].run(args)
    except (FileNotFoundError, ValueError) as error:
        print(f"{PROG} {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
