"""`python -m pipeline review`: check the arguments, then serve the review page with uvicorn."""
from __future__ import annotations

import ipaddress
import sys

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]", "::1")


def allowed_hosts(host: str) -> list[str]:
    """Host headers the page answers: the loopback names and the bound address; any host when bound
    to every interface (0.0.0.0, ::), where the machine is reached by names this cannot know."""
    return ["*"] if host in ("0.0.0.0", "::", "") else list(dict.fromkeys([*LOOPBACK_NAMES, host]))


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(args) -> None:
    import uvicorn  # ModuleNotFoundError -> cli.user_error names the pip install

    from pipeline.cli import open_existing
    from pipeline.review.app import create_app
    from pipeline.review.roots import Roots
    from pipeline.table import redacted
    roots = Roots(args.source)
    open_existing(args).close()
    app = create_app(args.table, args.table_name, roots, args.read_only, args.reviewer,
                     allowed_hosts(args.host))
    if not is_loopback(args.host):
        print(f"warning: --host {args.host}: the page is reachable from other machines, without a login; "
              f"anyone who reaches it can record corrections unless --read-only", file=sys.stderr)
    print(f"reviewing {redacted(args.table)}#{args.table_name}{' (read-only)' if args.read_only else ''} at "
          f"http://{'[' + args.host + ']' if ':' in args.host else args.host}:{args.port}/", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
