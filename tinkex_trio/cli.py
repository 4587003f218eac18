"""The ``tinkex-trio`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from tinkex_trio._version import __version__


def _cmd_version(args: argparse.Namespace) -> int:
    if args.json:
        import json
        import platform

        print(json.dumps({"tinkex_trio": __version__, "python": platform.python_version()}))
    else:
        print(f"tinkex-trio {__version__}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    # The simulator is imported only here: `import tinkex_trio` (and `tinkex-trio version`) never loads it.
    from tinkex_trio.sim._server import SimExtraMissingError, require_sim_extra, run_serve

    try:
        require_sim_extra(tls=args.tls)
    except SimExtraMissingError as exc:
        print(f"tinkex-trio serve: {exc}", file=sys.stderr)
        return 1
    return run_serve(
        host=args.host,
        port=args.port,
        tls=args.tls,
        ca_file=args.ca_file,
        faults_path=args.faults,
        seed=args.seed,
        http2=args.http2,
    )


def _add_serve_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("serve", help="run the simulated Tinker server (needs the sim extra)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to bind; 0 picks a free one (default 8000)")
    p.add_argument("--tls", action="store_true", help="serve HTTPS with a certificate from a fresh private CA")
    p.add_argument(
        "--ca-file",
        default="./tinkex-sim-ca.pem",
        help="with --tls: where to write the CA certificate (default ./tinkex-sim-ca.pem)",
    )
    p.add_argument("--faults", metavar="FILE.toml", default=None, help="fault injection settings (TOML)")
    p.add_argument("--seed", type=int, default=None, help="seed of the simulator and of its injected faults")
    p.add_argument("--no-http2", dest="http2", action="store_false", help="do not offer HTTP/2 over TLS")
    p.set_defaults(func=_cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``tinkex-trio`` command."""
    from tinkex_trio._cli import _bench_cmd, _demo, _manage

    parser = argparse.ArgumentParser(prog="tinkex-trio", description="Trio-native client for the Tinker API.")
    parser.add_argument("--version", action="version", version=f"tinkex-trio {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _bench_cmd.add_parser(sub)
    _demo.add_parser(sub)
    _manage.add_parsers(sub)
    p_version = sub.add_parser("version", help="print the version and exit")
    p_version.add_argument("--json", action="store_true", help="as JSON")
    p_version.set_defaults(func=_cmd_version)
    _add_serve_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tinkex-trio`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = args.func
    rc: int = func(args)
    return rc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
