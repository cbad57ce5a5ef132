"""reweigh show ITEM [--json]: an item's derivation, inputs, metrics, environment, checks."""

from __future__ import annotations

import argparse
import json

from ..policy.evidence import UNISOLATED_NOTE, cluster_note
from ..verbs.store import show
from .common import add_json_option, add_store_option, open_store, print_json


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("show", help="describe a store item")
    parser.add_argument("item", help="store path, name, derivation or weights digest")
    add_store_option(parser)
    add_json_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    info = show(args.item, open_store(args))
    if args.json:
        print_json(info)
        return 0
    for key in ("name", "version", "path", "derivation", "weights_digest",
                "environment_digest"):
        print(f"{key:18} {info[key]}")
    for name, digest in info["inputs"].items():
        print(f"input {name:12} {digest}")
    for name, value in info["metrics"].items():
        print(f"metric {name:11} {value:.6g}")
    env = info["environment"]
    platform = env.get("platform") or {}
    print(f"platform           {platform.get('name', 'native (recorded before platforms)')}, "
          f"{platform.get('arch', env.get('cpu_arch'))}, kernels "
          f"{platform.get('capability', env.get('cpu_capability'))}")
    print(f"environment        torch {env.get('packages', {}).get('torch')}, "
          f"{env.get('cpu_capability')}, {env.get('threads')} threads, "
          f"network {env.get('network_isolation')}")
    isolation = env.get("isolation") or {}
    print(f"isolation          {isolation.get('sandbox', 'unrecorded')}"
          + (f" ({UNISOLATED_NOTE})" if isolation.get("sandbox") == "none" else "")
          + (f" ({cluster_note(isolation['cluster'])})" if isolation.get("cluster") else ""))
    if isolation.get("cluster_ranks"):  # data-parallel workers on the cluster (--workers)
        print(f"cluster workers    {isolation['cluster_ranks']}")
    for check in info["checks"]:
        print(f"check {check['kind']:12} {check['result']}  {json.dumps(check['detail'])}")
    return 0
