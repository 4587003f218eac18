"""What every command shares: where it talks to (an embedded simulator or ``--base-url``), how it fails, JSON out.

Failures follow one rule: a user error (a bad argument, a missing key, a path the service does not know) is one line
on stderr and exit status 2; the service being unreachable or failing is one line and status 1; Ctrl-C is one line
and status 130. Never a traceback: :func:`run_command` maps every error of the library to its line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import trio

from tinkex_trio._config import Config
from tinkex_trio._groups import lone_exception
from tinkex_trio.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    CircuitOpenError,
    ConfigError,
    InvalidArgumentError,
    TinkexError,
    redact,
)

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "SIM_API_KEY",
    "CommandError",
    "Target",
    "UsageError",
    "add_target_arguments",
    "dump_json",
    "open_target",
    "quick_config",
    "run_command",
]

EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130
SIM_API_KEY: Final = "tml-tinkex-trio-cli"
"""The key the commands use with their embedded simulator (it accepts any ``tml-`` key)."""


class UsageError(Exception):
    """The user asked for something that cannot be done as asked: one line, exit status 2."""


class CommandError(Exception):
    """The command could not do its work (the service is unreachable, or failed): one line, exit status 1."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where a command talks to. ``server`` is the embedded simulator (``tinkex_trio.sim.SimServer``), or None."""

    base_url: str
    api_key: str
    server: Any = None

    @property
    def embedded(self) -> bool:
        return self.server is not None

    def describe(self) -> str:
        return f"embedded simulator at {self.base_url}" if self.embedded else self.base_url


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """``--base-url`` / ``--api-key``: a real service instead of the embedded simulator."""
    parser.add_argument(
        "--base-url",
        default=None,
        help="a Tinker service (default: an embedded simulator on 127.0.0.1; TINKER_BASE_URL is not read, so that "
        "the default never reaches a real service unasked)",
    )
    parser.add_argument("--api-key", default=None, help="with --base-url: the key (default: TINKER_API_KEY)")


@asynccontextmanager
async def open_target(args: argparse.Namespace, *, seed: int = 0) -> AsyncGenerator[Target]:
    """The service named by ``--base-url`` (key from ``--api-key`` or ``TINKER_API_KEY``), or an embedded simulator
    serving plain HTTP on 127.0.0.1 for the duration of the block (the ``sim`` extra)."""
    base_url: str | None = getattr(args, "base_url", None)
    if base_url:
        key = getattr(args, "api_key", None) or os.environ.get("TINKER_API_KEY")
        if not key:
            raise UsageError("--base-url needs a key: pass --api-key or set TINKER_API_KEY")
        yield Target(base_url.rstrip("/"), key)
        return
    if getattr(args, "api_key", None):
        raise UsageError("--api-key needs --base-url (the embedded simulator takes any key)")
    from tinkex_trio.sim._server import SimExtraMissingError, open_sim_server, require_sim_extra

    try:
        require_sim_extra(tls=False)
    except SimExtraMissingError as exc:
        raise UsageError(f"{exc} (or pass --base-url)") from None
    from tinkex_trio.sim._config import SimConfig

    async with open_sim_server(SimConfig(seed=seed)) as server:
        yield Target(server.base_url, SIM_API_KEY, server)


def quick_config(target: Target, **overrides: Any) -> Config:
    """A Config for a short command: few, quick retries (an unreachable service fails in seconds, not minutes), no
    client telemetry reports. Environment variables other than the key and URL still apply."""
    layers: dict[str, Any] = {
        "retry": {"max_retries": 2, "base_delay_s": 0.25, "max_delay_s": 1.0, "retry_budget_s": 10.0},
        "timeouts": {"connect_s": 5.0},
        "telemetry": False,
    }
    layers.update(overrides)
    return Config.create(target.api_key, target.base_url, **layers)


def dump_json(obj: Any, path: str | None = None) -> None:
    """``obj`` as indented JSON on stdout (``path`` None or ``-``) or into ``path``."""
    text = json.dumps(obj, indent=2, default=str) + "\n"
    if path in (None, "-"):
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    assert path is not None
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror or exc}") from None


def _line_for(exc: BaseException, base_url: str | None) -> tuple[int, str]:
    """The exit status and the one line for an error a command let escape."""
    where = f" ({base_url})" if base_url else ""
    if isinstance(exc, UsageError):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, CommandError):
        return EXIT_FAILURE, str(exc)
    if isinstance(exc, ConfigError | InvalidArgumentError):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, APIStatusError):
        status = exc.status_code
        code = EXIT_USAGE if 400 <= status < 500 and status not in (408, 429) else EXIT_FAILURE
        return code, f"the service answered {status}{where}: {exc.message}"
    if isinstance(exc, APIConnectionError):
        return EXIT_FAILURE, f"cannot reach the service{where}: {exc.message}"
    if isinstance(exc, CircuitOpenError):
        return EXIT_FAILURE, f"the service is failing{where}: {exc}"
    if isinstance(exc, APIError):
        return EXIT_FAILURE, f"request failed{where}: {exc.message}"
    if isinstance(exc, TinkexError):
        return EXIT_FAILURE, str(exc)
    raise exc


def run_command(name: str, main: Callable[[], Awaitable[int]], base_url: str | None = None) -> int:
    """Run ``main`` under trio and turn what it raises into one line on stderr and an exit status."""
    try:
        return trio.run(main)
    except KeyboardInterrupt:
        print(f"tinkex-trio {name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BaseExceptionGroup as group:
        lone = lone_exception(group)
        if lone is None or not isinstance(lone, Exception):
            raise
        code, line = _line_for(lone, base_url)
    except Exception as exc:
        code, line = _line_for(exc, base_url)
    print(f"tinkex-trio {name}: {redact(line)}", file=sys.stderr)
    return code
