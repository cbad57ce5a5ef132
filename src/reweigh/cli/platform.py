"""reweigh platform [ITEM] [--platform NAME] [--json]: this machine's numerics platform,
measured, and whether a rebuild here gives ITEM's bits."""

from __future__ import annotations

import argparse

from ..progress import reporter_for
from ..verbs.platform import PlatformReport, platform
from .common import (
    add_json_option,
    add_platform_option,
    add_sandbox_option,
    add_store_option,
    open_store,
    print_json,
)


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "platform", help="this machine's numerics platform, and whether an item's matches",
        description="Measure the numerics platform a build here runs on (the settings and "
                    "versions that decide the bits) and, given ITEM, say whether a rebuild "
                    "here gives its bits. Exit 1 when it does not, or when this machine "
                    "cannot build on the platform asked for.")
    parser.add_argument("item", nargs="?", help="store path, name, derivation or weights digest")
    add_sandbox_option(parser)
    add_platform_option(parser)
    add_store_option(parser)
    add_json_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    report = platform(args.item, store=open_store(args), reporter=reporter_for(args.json))
    if args.json:
        print_json(report.to_json())
    else:
        _render(report)
    return 0 if report.holds else 1


def _render(report: PlatformReport) -> None:
    print(f"machine     {report.arch}, {report.cpu_model}, {report.cores} cores")
    offered = report.offered or "none of reweigh's levels"
    print(f"offers      {offered}" + (f" ({'; '.join(report.limits)})" if report.limits else ""))
    print(f"levels      {', '.join(report.levels) or '-'}")
    if report.problem is not None:
        print(f"platform    {report.asked}: cannot build on it here: {report.problem}")
    elif report.platform is not None:
        p = report.platform
        packages = p.get("packages") or {}
        env = (p.get("settings") or {}).get("env") or {}
        pinned = " ".join(f"{k}={v}" for k, v in sorted(env.items()) if v is not None)
        print(f"platform    {p.get('name')} {p.get('digest')}")
        blas = ", ".join(map(str, (p.get("blas") or {}).values()))
        print(f"  versions  python {p.get('python')}, torch {packages.get('torch')}, numpy "
              f"{packages.get('numpy')}; blas {blas}")
        print(f"  kernels   {p.get('capability')}; {pinned}")
    if report.item is not None:
        item = report.item
        head = f"item        {item.name} {item.version}: recorded on {item.recorded.get('name')}"
        if item.matches:
            print(f"{head}, the same platform: a rebuild here gives its bits")
        else:
            print(f"{head}, not this platform")
            for line in item.differences:
                print(f"  differs   {line}")
