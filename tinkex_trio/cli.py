"""The ``tinkex-trio`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tinkex_trio._version import __version__


def _cmd_version(_args: argparse.Namespace) -> int:
    print(f"tinkex-trio {__version__}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``tinkex-trio`` command."""
    parser = argparse.ArgumentParser(prog="tinkex-trio", description="Trio-native client for the Tinker API.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_version = sub.add_parser("version", help="print the version and exit")
    p_version.set_defaults(func=_cmd_version)
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
