"""``python -m fitkit.train {gmm,vposer,cnf,...} --out PATH ...``."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

from fitkit.train import COMMAND_MODULES, COMMANDS


def build_parser() -> argparse.ArgumentParser:
    """The CLI parser with one subparser per registered command."""
    for module in COMMAND_MODULES:
        importlib.import_module(module)
    parser = argparse.ArgumentParser(prog="python -m fitkit.train", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS.values():
        command.configure(sub.add_parser(command.name, help=command.help,
                                         description=command.help))
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Parse ``argv`` and run the chosen command."""
    args = build_parser().parse_args(argv)
    COMMANDS[args.command].run(args)


if __name__ == "__main__":
    main()
