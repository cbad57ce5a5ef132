"""The entry point, and the one place where errors become exit codes.

0: success (or the verdict the caller required); 1: a check or comparison failed;
2: bad input or usage, with one line naming the file, field and reason; 70: a bug;
130: interrupted; 141: the reader of the output went away (`reweigh show X | head -c1`):
the command stops quietly with the status a shell gives a tool killed by SIGPIPE
(128 + 13), as `cat` or `ls` end there, so `set -o pipefail` still sees the output cut.
"""

from __future__ import annotations

import argparse
import importlib
import os
import select
import sys
import traceback
from typing import NoReturn

from .. import __version__
from ..errors import ReweighError
from .common import report_error, use_sandbox

# Command name -> module under reweigh.cli. Only the command being run is imported (with
# its verb and what that needs): `reweigh build` must not pay for numpy because `adapt`
# exists. Help and unknown commands import them all.
COMMANDS = {"build": "build", "challenge": "challenge", "list": "list", "show": "show",
            "path": "path", "store": "store", "verify": "verify", "check": "check",
            "estimate": "estimate", "import": "import_", "adapt": "adapt",
            "install": "install", "profile": "profile", "gc": "gc", "diff": "diff",
            "platform": "platform", "export": "export",
            "keys": "keys", "sign": "sign", "publish": "publish", "serve": "serve",
            "pull": "pull", "rebuild": "rebuild", "weather": "weather"}
INTERNAL_ERROR = 70
CLOSED_PIPE = 128 + 13  # SIGPIPE


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        # prog is "reweigh", or "reweigh build" for a command's own options
        sys.stderr.write(f"{self.prog}: {message} (hint: {self.prog} --help)\n")
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
    if first in COMMANDS:
        return [first]
    if first is None and "--version" in argv and not {"-h", "--help"} & set(argv):
        return []  # `reweigh --version` answers before any command is needed
    return list(COMMANDS)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = make_parser(argv).parse_args(argv)
        use_sandbox(args)
        code = int(args.run(args))
        sys.stdout.flush()  # a reader gone shows here, not in the interpreter's exit
        return code
    except BrokenPipeError as e:
        if not _reader_gone():  # another pipe than our output's: a bug
            return _internal_error(e)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # for exit's flush
        return CLOSED_PIPE
    except ReweighError as e:
        report_error(e)
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("reweigh: interrupted\n")
        return 130
    except Exception as e:
        return _internal_error(e)


def _internal_error(e: Exception) -> int:
    """A bug: say so in one line, keep the traceback for who asks."""
    if os.environ.get("REWEIGH_DEBUG"):
        traceback.print_exception(e)
    sys.stderr.write(f"reweigh: internal error: {type(e).__name__}: {e} "
                     "(set REWEIGH_DEBUG=1 for the traceback)\n")
    return INTERNAL_ERROR


def _reader_gone() -> bool:
    """Whether standard output is a pipe nobody reads any more (Linux flags its write end
    with POLLERR then)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError):  # stdout closed or not a file
        return True


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
