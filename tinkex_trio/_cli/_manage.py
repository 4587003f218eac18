"""The management commands, named as the official ``tinker`` CLI names them where they overlap:
``checkpoint list|info|delete|set-ttl``, ``run list|info``, ``session list|info|export-trace``.

They talk to the service through a :class:`~tinkex_trio.RestClient` on a bare transport (no session is created on
the service, no heartbeat runs), with few, quick retries (:func:`~tinkex_trio._cli._common.quick_config`). Without
``--base-url`` they run against an embedded simulator holding one demo training run with two checkpoints (the
simulator is seeded, so their paths are the same on every run), so that every command shows something.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final, TextIO

import httpx
import msgspec
import trio

from tinkex_trio import types
from tinkex_trio._cli._common import (
    CommandError,
    Target,
    UsageError,
    add_target_arguments,
    dump_json,
    open_target,
    quick_config,
    run_command,
)
from tinkex_trio._logsink import ResilienceLog
from tinkex_trio._rest import RestClient
from tinkex_trio._session import open_session
from tinkex_trio._telemetry import TelemetryBus
from tinkex_trio._transport import Transport

__all__ = ["add_parsers"]

DEMO_MODEL: Final = "meta-llama/Llama-3.2-1B"

Action = Callable[[RestClient, argparse.Namespace], Awaitable[Any]]


# -- the commands (each returns what --json prints, and prints its table otherwise) ---------------------------------


async def checkpoint_list(rest: RestClient, args: argparse.Namespace) -> Any:
    checkpoints: list[types.Checkpoint] = []
    if args.run_id:
        checkpoints = (await rest.list_checkpoints(args.run_id)).checkpoints
    else:
        async for checkpoint in rest.iter_user_checkpoints(page_size=100):
            checkpoints.append(checkpoint)
            if args.limit and len(checkpoints) >= args.limit:
                break
    rows = [
        [c.tinker_path, c.checkpoint_type, _size(c.size_bytes), _when(c.time), _when(c.expires_at)] for c in checkpoints
    ]
    _table(args.out, ["path", "type", "size", "created", "expires"], rows, empty="no checkpoints")
    return [msgspec.to_builtins(c) for c in checkpoints]


async def _find_checkpoint(rest: RestClient, path: str) -> types.Checkpoint:
    ref = _parse_path(path)
    for checkpoint in (await rest.list_checkpoints(ref.model_id)).checkpoints:
        if checkpoint.tinker_path == path:
            return checkpoint
    raise UsageError(f"no checkpoint {path} (training run {ref.model_id} has no such checkpoint)")


async def checkpoint_info(rest: RestClient, args: argparse.Namespace) -> Any:
    checkpoint = await _find_checkpoint(rest, args.checkpoint_path)
    run = await rest.get_training_run(_parse_path(args.checkpoint_path).model_id)
    fields = [
        ("path", checkpoint.tinker_path),
        ("type", checkpoint.checkpoint_type),
        ("id", checkpoint.checkpoint_id),
        ("training run", run.training_run_id),
        ("base model", run.base_model),
        ("lora rank", "-" if run.lora_rank is None else str(run.lora_rank)),
        ("size", _size(checkpoint.size_bytes)),
        ("created", _when(checkpoint.time)),
        ("expires", _when(checkpoint.expires_at)),
        ("public", "yes" if checkpoint.public else "no"),
    ]
    _pairs(args.out, fields)
    return {"checkpoint": msgspec.to_builtins(checkpoint), "training_run": msgspec.to_builtins(run)}


async def checkpoint_delete(rest: RestClient, args: argparse.Namespace) -> Any:
    paths: list[str] = list(args.checkpoint_paths)
    for path in paths:
        _parse_path(path)
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError("refusing to delete without --yes (stdin is not a terminal to confirm on)")
        prompt = f"delete {len(paths)} checkpoint(s) for good? [y/N] "
        answer = await trio.to_thread.run_sync(input, prompt)
        if answer.strip().lower() not in ("y", "yes"):
            raise UsageError("nothing deleted")
    for path in paths:
        await _find_checkpoint(rest, path)  # a clear "no checkpoint" before deleting anything
    for path in paths:
        await rest.delete_checkpoint_from_tinker_path(path)
        print(f"deleted {path}", file=args.out)
    return {"deleted": paths}


async def checkpoint_set_ttl(rest: RestClient, args: argparse.Namespace) -> Any:
    if (args.ttl is None) == (not args.remove):
        raise UsageError("give exactly one of --ttl SECONDS or --remove")
    if args.ttl is not None and args.ttl < 1:
        raise UsageError(f"--ttl must be a positive number of seconds, got {args.ttl}")
    _parse_path(args.checkpoint_path)
    await rest.set_checkpoint_ttl_from_tinker_path(args.checkpoint_path, None if args.remove else args.ttl)
    checkpoint = await _find_checkpoint(rest, args.checkpoint_path)
    print(f"{checkpoint.tinker_path}: expires {_when(checkpoint.expires_at)}", file=args.out)
    return msgspec.to_builtins(checkpoint)


async def run_list(rest: RestClient, args: argparse.Namespace) -> Any:
    runs: list[types.TrainingRun] = []
    async for run in rest.iter_training_runs(page_size=50):
        runs.append(run)
        if args.limit and len(runs) >= args.limit:
            break
    rows = [
        [
            r.training_run_id,
            r.base_model,
            "-" if r.lora_rank is None else str(r.lora_rank),
            _when(r.last_request_time),
            "-" if r.last_checkpoint is None else r.last_checkpoint.tinker_path,
        ]
        for r in runs
    ]
    _table(
        args.out, ["run id", "base model", "rank", "last request", "last checkpoint"], rows, empty="no training runs"
    )
    return [msgspec.to_builtins(r) for r in runs]


async def run_info(rest: RestClient, args: argparse.Namespace) -> Any:
    run = await rest.get_training_run(args.run_id)
    checkpoints = (await rest.list_checkpoints(args.run_id)).checkpoints
    _pairs(
        args.out,
        [
            ("run id", run.training_run_id),
            ("base model", run.base_model),
            ("owner", run.model_owner),
            ("lora rank", "-" if run.lora_rank is None else str(run.lora_rank)),
            ("corrupted", "yes" if run.corrupted else "no"),
            ("last request", _when(run.last_request_time)),
            ("checkpoints", ", ".join(c.tinker_path for c in checkpoints) or "-"),
        ],
    )
    return {"training_run": msgspec.to_builtins(run), "checkpoints": [msgspec.to_builtins(c) for c in checkpoints]}


async def session_list(rest: RestClient, args: argparse.Namespace) -> Any:
    sessions: list[str] = []
    async for session_id in rest.iter_sessions(page_size=50):
        sessions.append(session_id)
        if args.limit and len(sessions) >= args.limit:
            break
    _table(args.out, ["session id"], [[s] for s in sessions], empty="no sessions")
    return sessions


async def session_info(rest: RestClient, args: argparse.Namespace) -> Any:
    session = await rest.get_session(args.session_id)
    _pairs(
        args.out,
        [
            ("session id", args.session_id),
            ("training runs", ", ".join(session.training_run_ids) or "-"),
            ("samplers", ", ".join(session.sampler_ids) or "-"),
        ],
    )
    return {"session_id": args.session_id, **msgspec.to_builtins(session)}


async def session_export_trace(rest: RestClient, args: argparse.Namespace) -> Any:
    if sys.stderr.isatty():  # a failure stays one line on stderr for scripts
        print(f"exporting the trace of session {args.session_id} (this may take a while)...", file=sys.stderr)
    url = await rest.export_session_trace(args.session_id)
    if args.url_only:
        print(url, file=args.out)  # alone on its line: usable as $(tinkex-trio session export-trace ID --url-only)
        return {"session_id": args.session_id, "url": url}
    destination, size = await _download(url, args.output, args.session_id)
    _pairs(args.out, [("session id", args.session_id), ("trace", str(destination)), ("size", _size(size))])
    return {"session_id": args.session_id, "destination": str(destination), "file_size_bytes": size}


_DOWNLOAD_TIMEOUT: Final = httpx.Timeout(60.0, connect=10.0)


async def _download(url: str, output: str | None, session_id: str) -> tuple[Path, int]:
    """Fetch the trace at ``url`` (a signed URL: no credentials) into ``output``, or into ``<session id>.pftrace``
    (``.json`` when the server sends JSON, as the simulator does) in the current directory."""
    try:
        async with (
            httpx.AsyncClient(timeout=_DOWNLOAD_TIMEOUT, follow_redirects=True) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code != 200:
                raise CommandError(f"downloading the trace failed: the storage answered {response.status_code}")
            json_trace = response.headers.get("content-type", "").startswith("application/json")
            path = Path(output) if output else Path.cwd() / f"{session_id}{'.json' if json_trace else '.pftrace'}"
            path.parent.mkdir(parents=True, exist_ok=True)
            size = 0
            async with await trio.open_file(path, "wb") as fh:
                async for chunk in response.aiter_bytes():
                    await fh.write(chunk)
                    size += len(chunk)
    except httpx.HTTPError as exc:
        raise CommandError(f"downloading the trace failed: {type(exc).__name__}: {exc}") from None
    except OSError as exc:
        raise CommandError(f"cannot write the trace: {exc.strerror or exc}") from None
    return path, size


# -- running one ------------------------------------------------------------------------------------------------------


def _parse_path(path: str) -> types.TinkerPath:
    try:
        return types.TinkerPath.parse(path)
    except ValueError:
        raise UsageError(
            f"not a checkpoint path: {path!r} (expected tinker://<run-id>/<weights|sampler_weights>/<name>)"
        ) from None


async def _seed_demo(target: Target) -> None:
    """One training run with a training checkpoint and a sampler checkpoint, on the embedded simulator."""
    async with open_session(config=quick_config(target), tags=("tinkex-trio-demo",)) as session:
        trainer = await session.create_lora_training_client(DEMO_MODEL, rank=8, seed=0)
        await trainer.save_state("demo-state")
        await trainer.save_weights_for_sampler("demo-weights")


def _runner(name: str, action: Action) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        async def main() -> int:
            async with open_target(args) as target:
                if target.embedded:
                    await _seed_demo(target)
                    print("(embedded simulator with one demo run; --base-url for a service)", file=sys.stderr)
                telemetry = TelemetryBus()
                ResilienceLog().attach(telemetry)
                transport = Transport(quick_config(target), telemetry=telemetry)
                try:
                    result = await action(RestClient(transport), args)
                finally:
                    await transport.aclose()
            if args.json:
                dump_json(result)
            return 0

        # With --json the table goes to stderr, so that stdout is the JSON alone.
        args.out = sys.stderr if args.json else sys.stdout
        return run_command(name, main, args.base_url)

    return run


def _table(out: TextIO, header: Sequence[str], rows: Sequence[Sequence[str]], *, empty: str) -> None:
    if not rows:
        print(f"({empty})", file=out)
        return
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    for line in (header, *rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip(), file=out)


def _pairs(out: TextIO, fields: Sequence[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        print(f"{key.ljust(width)}  {value}", file=out)


def _size(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S %Z").strip()


def _add(sub: Any, name: str, help_text: str, action: Action, prog: str) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_target_arguments(p)
    p.set_defaults(func=_runner(prog, action))
    return p


def add_parsers(sub: Any) -> None:
    """``checkpoint``, ``run`` and ``session``, each a group of subcommands."""
    checkpoint = sub.add_parser("checkpoint", help="list, inspect, delete checkpoints, set their TTL")
    cs = checkpoint.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = _add(cs, "list", "list checkpoints (of one run with --run-id)", checkpoint_list, "checkpoint list")
    p.add_argument("--run-id", default=None, help="the training run whose checkpoints to list")
    p.add_argument("--limit", type=int, default=20, help="at most this many across runs (0: all; default 20)")
    p = _add(cs, "info", "show one checkpoint", checkpoint_info, "checkpoint info")
    p.add_argument("checkpoint_path", help="tinker://<run-id>/weights/<name>")
    p = _add(cs, "delete", "delete checkpoints for good", checkpoint_delete, "checkpoint delete")
    p.add_argument("checkpoint_paths", nargs="+", metavar="CHECKPOINT_PATH")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p = _add(cs, "set-ttl", "set or remove a checkpoint's expiry", checkpoint_set_ttl, "checkpoint set-ttl")
    p.add_argument("checkpoint_path")
    p.add_argument("--ttl", type=int, default=None, help="seconds from now")
    p.add_argument("--remove", action="store_true", help="never expire")

    run = sub.add_parser("run", help="list and inspect training runs")
    rs = run.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = _add(rs, "list", "list training runs", run_list, "run list")
    p.add_argument("--limit", type=int, default=20, help="at most this many (0: all; default 20)")
    p = _add(rs, "info", "show one training run and its checkpoints", run_info, "run info")
    p.add_argument("run_id")

    session = sub.add_parser("session", help="list and inspect sessions, export their traces")
    ss = session.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = _add(ss, "list", "list sessions", session_list, "session list")
    p.add_argument("--limit", type=int, default=20, help="at most this many (0: all; default 20)")
    p = _add(ss, "info", "show one session's training runs and samplers", session_info, "session info")
    p.add_argument("session_id")
    p = _add(
        ss,
        "export-trace",
        "download a trace of the session's requests (open it in https://ui.perfetto.dev)",
        session_export_trace,
        "session export-trace",
    )
    p.add_argument("session_id")
    p.add_argument("--output", "-o", default=None, help="where to write it (default: ./<session id>.pftrace)")
    p.add_argument("--url-only", action="store_true", help="print the signed download URL instead of downloading")
