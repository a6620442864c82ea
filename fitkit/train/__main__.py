"""``python -m fitkit.train {gmm,vposer,cnf,...} --out PATH ...``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from fitkit.io.runs import run_command
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
    """Parse ``argv`` and run the chosen command; returns the exit code: 0; 2 with one line
    ``python -m fitkit.train COMMAND: error: ...`` naming the file or setting for bad input (a
    missing or malformed file, a count or rate that would not train, a checkpoint that cannot
    be resumed, settings that differ from the run's, an output another trainer is writing); 1
    with one line for a failure of the machine (disk full, permission denied); 130 when
    interrupted (:func:`fitkit.io.runs.run_command`)."""
    args = build_parser().parse_args(argv)

    def train() -> int:
        COMMANDS[args.command].run(args)
        return 0

    return run_command(f"{PROG} {args.command}", train,
                       interrupted="run the same command with --resume to continue")


if __name__ == "__main__":
    sys.exit(main())
