"""`walle ui`: the web console (docs/console.md)."""

from __future__ import annotations

import ipaddress
import sys
import threading

from walle.adapters.consul import ConsulConfig
from walle.catalog import CatalogError, catalog_dir, load_catalog
from walle.cli.common import add_consul_args, progress
from walle.cli.main import EXIT_USAGE
from walle.console.server import Console, serving

DEFAULT_LISTEN = "127.0.0.1:8470"


def register(subparsers) -> None:
    ui = subparsers.add_parser("ui", help="the web console: the pool, jobs and actions")
    ui.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                    help="address to serve on (default: %(default)s)")
    ui.add_argument("--catalog", metavar="DIR",
                    help="package catalog for installs (default: $WALLE_CATALOG or the "
                         "repository's catalog/)")
    ui.add_argument("--no-usage", action="store_true",
                    help="do not read memory use from the nodes' walle-exporter")
    add_consul_args(ui)
    ui.set_defaults(func=cmd_ui)


def cmd_ui(args) -> int:
    host, _, port = args.listen.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        print(f"walle ui: --listen {args.listen!r}: use HOST:PORT, e.g. {DEFAULT_LISTEN}",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        catalog = load_catalog(catalog_dir(args.catalog))
    except CatalogError as err:
        progress(f"walle ui: no package catalog, installs are off: {err}")
        catalog = None
    console = Console(ConsulConfig.from_env(addr=args.consul_addr), catalog,
                      usage=not args.no_usage)
    if not _loopback(host):
        progress(f"walle ui: listening on {host}, beyond this machine: tokens typed into the "
                 "page travel in clear over HTTP; put TLS in front of it")
    with serving(console, host, int(port)) as server:
        bound_host, bound_port = server.server_address[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        progress(f"walle ui: http://{shown}:{bound_port}/ (Consul {console.config.address}); "
                 "Ctrl-C stops it")
        threading.Event().wait()
    return 0


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
