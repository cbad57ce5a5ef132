"""reweigh serve DIR [--host H] [--port N]: serve a cache folder over HTTP until stopped.

For small setups and tests (GET, HEAD, single byte ranges, one thread per client);
any static HTTP server serves the same folder.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from ..errors import UsageError
from .common import non_negative_int


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("serve", help="serve a cache folder over HTTP")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=non_negative_int, default=8080,
                        help="port (default 8080; 0: any free port)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..cache.server import serve

    if not args.folder.is_dir():
        raise UsageError(f"{args.folder}: no such folder")
    try:
        running = serve(args.folder, args.host, args.port, background=False)
    except OSError as e:
        raise UsageError(f"--port: cannot listen on {args.host}:{args.port} ({e.strerror})") \
            from e
    # Ctrl-C and a plain `kill` stop it, whatever the parent left: a shell script's
    # background job starts with SIGINT ignored, and a server must stop when told.
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, signal.default_int_handler)  # raises KeyboardInterrupt
    print(f"serving {args.folder.resolve()} at {running.url}", flush=True)
    try:
        running.server.serve_forever()
    except KeyboardInterrupt:
        sys.stderr.write("reweigh: stopped\n")
    finally:
        running.server.server_close()
    return 0
