"""The ``vsdloral`` command line: convert, info, init, upscale, eval.

Each subcommand lives in :mod:`vsdloral.commands` as a module with ``register(subparsers)``
that sets ``func`` on its parser. Errors a user can fix print one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys



class CLIError(Exception):
    """An error the user can fix: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vsdloral", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from . import commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"vsdloral.commands.{info.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .model.errors import WeightsError

    try:
        return int(args.func(args) or 0)
    except (CLIError, WeightsError, FileNotFoundError, PermissionError, IsADirectoryError, ValueError) as exc:
        print(f"vsdloral {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vsdloral {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
