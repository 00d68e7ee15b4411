"""``python -m cancelcore``: the command line.

    python -m cancelcore demo       a service host at work, checked (a few seconds)
    python -m cancelcore serve-demo a real uvicorn server: disconnects and a shutdown, checked
    python -m cancelcore version    the version of the package and its C core
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cancelcore",
        description="cancelcore: call cancellation for server-side operations "
        "(the WWSAPI service-host model).",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="run a service host through channel faults, an abort and a close, and check it",
        description="Runs blocking operations on dispatch worker threads and async ones on an "
        "asyncio loop over several channels; faults some channels, aborts the host and closes "
        "it; then checks that every free-state callback ran exactly once and every cancel "
        "callback at most once, against its own books and host.stats.  Exit status 1 if a "
        "check fails.",
    )
    demo.add_argument("--seed", type=int, default=1, help="seed of the request mix (default 1)")
    display = demo.add_mutually_exclusive_group()
    display.add_argument(
        "--plain", action="store_true", help="plain progress lines even on a terminal"
    )
    display.add_argument(
        "--live", action="store_true", help="a live status line even when not on a terminal"
    )
    serve = commands.add_parser(
        "serve-demo",
        help="run a real uvicorn server with CancellationMiddleware under disconnecting "
        "clients and a shutdown, and check it",
        description="Starts uvicorn in a thread of this process on a free 127.0.0.1 port, "
        "serving a Starlette app (an async slow query, a sync endpoint blocked in the thread "
        "pool, a streaming one) wrapped in cancelcore.asgi.CancellationMiddleware; drives it "
        "with concurrent TCP clients, some of which close their connection mid-request or "
        "mid-stream; then tells the server to exit with requests in flight.  Reports cancels "
        "by reason, free-states and disconnect-to-cancel latency, and checks them against "
        "what the clients saw and host.stats.  Needs uvicorn and starlette.  Exit status 1 "
        "if a check fails.",
    )
    serve.add_argument("--requests", type=int, default=120,
                       help="number of requests, 20 to 2000 (default 120)")
    serve.add_argument("--seed", type=int, default=1, help="seed of the request mix (default 1)")
    serve_display = serve.add_mutually_exclusive_group()
    serve_display.add_argument(
        "--plain", action="store_true", help="plain progress lines even on a terminal"
    )
    serve_display.add_argument(
        "--live", action="store_true", help="a live status line even when not on a terminal"
    )
    commands.add_parser("version", help="print the version", description="Prints the version.")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "version":
        from . import __version__

        print(__version__)
        return 0
    if args.command == "demo":
        from ._demo import run_demo

        live: Optional[bool] = True if args.live else False if args.plain else None
        return run_demo(seed=args.seed, live=live)
    if args.command == "serve-demo":
        from ._server_demo import run_server_demo

        live = True if args.live else False if args.plain else None
        return run_server_demo(requests=args.requests, seed=args.seed, live=live)
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
