"""The entry point, and the one place where errors become exit codes.

0: success (or the verdict the caller required); 1: a check or comparison failed;
2: bad input or usage, with one line naming the file, field and reason.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from typing import NoReturn

from .. import __version__
from ..errors import ReweighError
from .common import use_sandbox

# Command name -> module under reweigh.cli. Only the command being run is imported (with
# its verb and what that needs): `reweigh build` must not pay for numpy because `adapt`
# exists. Help and unknown commands import them all.
COMMANDS = {"build": "build", "challenge": "challenge", "list": "list", "show": "show",
            "path": "path", "store": "store", "verify": "verify", "check": "check",
            "estimate": "estimate", "import": "import_", "adapt": "adapt",
            "install": "install", "profile": "profile", "gc": "gc", "diff": "diff"}
INTERNAL_ERROR = 70


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"reweigh: {self.prog}: {message}\n")
        raise SystemExit(2)


def make_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for `argv`: with only its command registered when it names one (all
    of them when `argv` is None)."""
    parser = Parser(prog="reweigh", description="Trained weights you can rebuild, check "
                    "and replace.")
    parser.add_argument("--version", action="version", version=f"reweigh {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name in list(COMMANDS) if argv is None else _commands_for(argv):
        importlib.import_module(f"{__package__}.{COMMANDS[name]}").register(commands)
    return parser


def _commands_for(argv: list[str]) -> list[str]:
    first = next((word for word in argv if not word.startswith("-")), None)
    return [first] if first in COMMANDS else list(COMMANDS)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = make_parser(argv).parse_args(argv)
    use_sandbox(args)
    try:
        return int(args.run(args))
    except ReweighError as e:
        if e.details:
            sys.stderr.write(e.details.rstrip() + "\n")
        sys.stderr.write(f"reweigh: {e.one_line()}\n")
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("reweigh: interrupted\n")
        return 130
    except Exception as e:  # a bug: say so in one line, keep the traceback for who asks
        if os.environ.get("REWEIGH_DEBUG"):
            traceback.print_exc()
        sys.stderr.write(f"reweigh: internal error: {type(e).__name__}: {e} "
                         "(set REWEIGH_DEBUG=1 for the traceback)\n")
        return INTERNAL_ERROR


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
