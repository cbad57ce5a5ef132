"""Options and output helpers shared by the commands."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from .. import numerics, sandbox
from ..errors import ReweighError
from ..job import ENV_CLUSTER, ENV_WORKERS
from ..store import Store


def add_store_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", type=Path, default=None,
                        help="store root (default: $REWEIGH_STORE or the XDG data directory)")


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def add_sandbox_option(parser: argparse.ArgumentParser) -> None:
    """For commands that run recipe code: how it is isolated. `none` is for machines where
    bubblewrap cannot run; the provenance and every verdict then say so."""
    parser.add_argument("--sandbox", choices=sandbox.CHOICES, default=None,
                        help="isolation of the recipe's code (default: $REWEIGH_SANDBOX, "
                        "else bubblewrap; 'none' runs it unisolated and records that)")


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """For commands that run recipe code: its intra-op threads (and ctx.map's workers)."""
    from ..verbs.build import DEFAULT_THREADS

    parser.add_argument("--threads", type=positive_int, default=None, metavar="N",
                        help=f"threads for the recipe's code, and ctx.map's worker processes "
                        f"(default {DEFAULT_THREADS}: for the examples, two threads were up to "
                        "15x slower on a busy machine and at most 10%% faster on a quiet one; "
                        "at most the usable cores; the weights are the same whatever N)")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options of every command that runs recipe code: --threads, --sandbox,
    --platform, --store and --json, in that order."""
    add_threads_option(parser)
    add_sandbox_option(parser)
    add_platform_option(parser)
    add_store_option(parser)
    add_json_option(parser)


def add_platform_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--platform", choices=(numerics.PORTABLE, numerics.NATIVE, *numerics.LEVELS),
        help="build on this numerics platform instead of the recipe's (another derivation, "
             "recorded; a rebuild on another platform can only be equivalent); default: "
             "the recipe's [build] platform, portable unless it says otherwise "
             f"(also ${numerics.ENV_CHOICE})")


def add_workers_options(parser: argparse.ArgumentParser) -> None:
    """For commands that train: how many workers share the work. The weights are the
    same whatever the count, so it is not part of the derivation."""
    parser.add_argument("--workers", type=positive_int, default=None, metavar="N",
                        help="spread the build over N workers: data-parallel processes for a "
                        "recipe with shards (torch.distributed on gloo) and a local Ray "
                        "cluster for ctx.map, both started and stopped by reweigh inside the "
                        f"sandbox (default 1; also ${ENV_WORKERS}); the weights are the same "
                        "whatever N")
    parser.add_argument("--cluster", default=None, metavar="ADDRESS",
                        help="run ctx.map's tasks on an existing Ray cluster (host:port) "
                        f"instead of a local one (also ${ENV_CLUSTER})")


def use_sandbox(args: argparse.Namespace) -> None:
    """Make the command's --sandbox, --platform, --workers and --cluster the choice of
    every run it starts."""
    if getattr(args, "sandbox", None):
        os.environ[sandbox.ENV_CHOICE] = args.sandbox
    if getattr(args, "workers", None):
        os.environ[ENV_WORKERS] = str(args.workers)
    if getattr(args, "cluster", None):
        os.environ[ENV_CLUSTER] = args.cluster
    if getattr(args, "platform", None):
        os.environ[numerics.ENV_CHOICE] = args.platform


def _bounded_int(text: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{value} is not between {low} and {high}")
    return value


def positive_int(text: str) -> int:
    return _bounded_int(text, 1, 4096)


def non_negative_int(text: str) -> int:
    return _bounded_int(text, 0, 1_000_000)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def add_profile_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", type=Path, default=None,
                        help="profile directory (default: $REWEIGH_PROFILE or "
                        "~/.reweigh-profile)")


def open_store(args: argparse.Namespace) -> Store:
    return Store(args.store)


def report_error(error: ReweighError, line: str | None = None) -> None:
    """A failure as every command reports it: its details (a recipe's traceback, a log's
    tail) when it has them, then one line, `line` if given."""
    if error.details:
        sys.stderr.write(error.details.rstrip() + "\n")
    sys.stderr.write(f"reweigh: {line or error.one_line()}\n")


def warn_line(line: str) -> None:
    """A command's warning (a server refused, the next one tried): one line on stderr,
    at once, whatever stdout is doing."""
    print(f"reweigh: {line}", file=sys.stderr, flush=True)


def print_json(data: Any) -> None:
    """Strict JSON: an infinite or NaN number (a distance between tensors that differ in
    structure, say) is written as the string "inf", "-inf" or "nan"."""
    json.dump(_finite(data), sys.stdout, indent=2, default=str, allow_nan=False)
    sys.stdout.write("\n")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def colour(text: str, code: str) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if sys.stdout.isatty() else text
