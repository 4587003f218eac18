"""Serving the simulated Tinker server over real loopback sockets: `open_sim_server`.

hypercorn does the HTTP (HTTP/1.1 and HTTP/2) but the accept loop is ours: every accepted TCP connection is wrapped
in a `tinkex_trio.sim._connections.Connection` (byte counting, a registry keyed by the peer address) before TLS and
before hypercorn's per-connection `TCPServer` sees it. That registry is how the fault middleware resets a
connection.

hypercorn and trustme are imported only when a server is opened (the ``sim`` extra).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import shutil
import signal
import socket as stdlib_socket
import ssl
import sys
import tempfile
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import trio

from tinkex_trio._groups import is_interruption, leaves, reraise
from tinkex_trio.sim._app import create_app
from tinkex_trio.sim._asgi import ASGIApp, Message, Receive, Scope, Send
from tinkex_trio.sim._config import SimConfig
from tinkex_trio.sim._connections import Connection, Listener, Registry
from tinkex_trio.sim._fault_middleware import FaultMiddleware
from tinkex_trio.sim._faults import FaultConfig
from tinkex_trio.sim._stats import SimStats, StatsMiddleware

__all__ = [
    "SIM_EXTRA_HINT",
    "SimExtraMissingError",
    "SimServer",
    "open_sim_server",
    "require_sim_extra",
    "run_serve",
]

SIM_EXTRA_HINT = "the simulated server needs hypercorn and trustme: pip install 'tinkex_trio[sim]'"
_LOG = logging.getLogger("tinkex_trio.sim.server")


class SimExtraMissingError(ImportError):
    """hypercorn or trustme is not installed."""


def require_sim_extra(*, tls: bool = True) -> None:
    """Raise `SimExtraMissingError` (one line naming the ``sim`` extra) if the serving dependencies are missing."""
    try:
        import hypercorn.config  # pyright: ignore[reportUnusedImport]
        import hypercorn.trio.tcp_server  # noqa: F401  # pyright: ignore[reportUnusedImport]

        if tls:
            import trustme  # noqa: F401  # pyright: ignore[reportUnusedImport]
    except ImportError as exc:
        raise SimExtraMissingError(f"{SIM_EXTRA_HINT} ({exc.name} is missing)") from None


# -- ASGI lifespan (run ourselves: our accept loop replaces hypercorn's worker_serve) ------------------------------


class _Lifespan:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.supported = True
        self._send, self._receive = trio.open_memory_channel[Message](2)
        self._started = trio.Event()
        self._stopped = trio.Event()
        self._failure: str | None = None

    async def run(self) -> None:
        scope: Scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
        try:
            await self.app(scope, self._receive.receive, self._app_send)
        except Exception:
            # An app without lifespan support raises on this scope: carry on without it (the ASGI spec's rule).
            if not self._started.is_set():
                self.supported = False
            else:
                _LOG.exception("the simulator app failed during lifespan")
        finally:
            self._started.set()
            self._stopped.set()

    async def _app_send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "lifespan.startup.complete":
            self._started.set()
        elif kind == "lifespan.startup.failed":
            self._failure = str(message.get("message", ""))
            self._started.set()
        elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            self._stopped.set()

    async def startup(self, limit_s: float) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            self._send.send_nowait({"type": "lifespan.startup"})
        with trio.fail_after(limit_s):
            await self._started.wait()
        if self._failure is not None:
            raise RuntimeError(f"the simulator app failed to start: {self._failure}")

    async def shutdown(self, limit_s: float) -> None:
        if not self.supported or self._stopped.is_set():
            return
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, trio.WouldBlock):
            self._send.send_nowait({"type": "lifespan.shutdown"})
        with trio.move_on_after(limit_s):
            await self._stopped.wait()


# -- the server -----------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class SimServer:
    """A running simulator, as yielded by `open_sim_server`."""

    base_url: str
    """``http(s)://host:port`` (no trailing slash; API paths are under ``/api/v1/``)."""
    host: str
    port: int
    tls: bool
    http2: bool
    config: SimConfig
    """The live configuration: change ``config.faults`` (or anything else) while the server runs."""
    app: ASGIApp
    """The simulator app itself (`create_app`'s ``SimApp``), or the app given to `open_sim_server`."""
    asgi_app: ASGIApp
    """What hypercorn serves: ``StatsMiddleware(FaultMiddleware(app))``."""
    stats: SimStats
    ca_pem: bytes | None = None
    """The CA certificate (PEM) that signed the server's certificate; None without TLS."""
    ca_pem_path: Path | None = None
    """A temporary file holding `ca_pem` (e.g. for ``SSL_CERT_FILE`` of a subprocess); removed when the server stops."""
    _registry: Registry | None = field(default=None, repr=False)

    @property
    def faults(self) -> FaultConfig:
        return self.config.faults

    def url(self, path: str) -> str:
        return self.base_url + (path if path.startswith("/") else "/" + path)

    def client_ssl_context(self) -> ssl.SSLContext:
        """A client-side SSLContext that trusts the server's CA (for httpx's ``verify=``)."""
        if self.ca_pem is None:
            raise RuntimeError("this simulator was started without TLS")
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        ctx.load_verify_locations(cadata=self.ca_pem.decode("ascii"))
        return ctx

    def start_outage(self, duration_s: float) -> None:
        """Every request fails with 503 for ``duration_s`` seconds of trio time from now."""
        self.config.faults.start_outage(duration_s)

    def end_outage(self) -> None:
        self.config.faults.end_outage()

    @property
    def connection_count(self) -> int:
        return 0 if self._registry is None else len(self._registry)

    def reset_all_connections(self) -> None:
        """Reset (RST) every open connection now."""
        if self._registry is not None:
            self._registry.abort_all()


def _format_host(host: str) -> str:
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]"
    except ValueError:
        pass
    return host


def _url_host(host: str) -> str:
    """The host to put in URLs: a wildcard bind address is reached through loopback."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def _write_ca_file(directory: str, pem: bytes) -> Path:
    path = Path(directory) / "tinkex-sim-ca.pem"
    path.write_bytes(pem)
    return path


def _make_tls(host: str, http2: bool) -> tuple[ssl.SSLContext, bytes]:
    import trustme

    ca = trustme.CA(organization_name="tinkex_trio simulator")
    names = {host, "localhost", "127.0.0.1", "::1"}
    cert = ca.issue_cert(*sorted(n for n in names if n))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION
    cert.configure_cert(ctx)  # pyright: ignore[reportUnknownMemberType]
    ctx.set_alpn_protocols(["h2", "http/1.1"] if http2 else ["http/1.1"])
    return ctx, ca.cert_pem.bytes()


async def _bound_socket(host: str, port: int, backlog: int) -> trio.socket.SocketType:
    """A listening TCP socket on ``(host, port)``."""
    family = stdlib_socket.AF_INET6 if ":" in host else stdlib_socket.AF_INET
    sock = trio.socket.socket(family, stdlib_socket.SOCK_STREAM)
    try:
        if os.name != "nt":
            sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_REUSEADDR, 1)
        await sock.bind((host, port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def _connection_handler(
    app: _HypercornApp, hc: Any, context: Any, registry: Registry
) -> Callable[[trio.abc.Stream], Awaitable[None]]:
    """Serve one accepted connection with hypercorn's `TCPServer`; a failure is counted, never raised."""
    from hypercorn.trio.tcp_server import TCPServer

    async def handle(stream: trio.abc.Stream) -> None:
        try:
            await TCPServer(app, hc, context, {}, cast(Any, stream))  # pyright: ignore[reportArgumentType]
        except Exception:
            registry.stats.connection_errors += 1
            _LOG.debug("connection handler failed", exc_info=True)
        finally:
            inner_conn: object = stream
            if isinstance(stream, trio.SSLStream):
                inner_conn = cast(trio.SSLStream[trio.abc.Stream], stream).transport_stream
            if isinstance(inner_conn, Connection):
                registry.remove(inner_conn)

    return handle


class _ServerManager:
    """The async context manager returned by `open_sim_server`."""

    def __init__(
        self,
        config: SimConfig | None,
        *,
        app: ASGIApp | None,
        tls: bool,
        host: str,
        port: int,
        http2: bool,
        graceful_timeout: float,
        keep_alive_timeout: float,
        backlog: int,
    ) -> None:
        self._config = config
        self._app = app
        self._tls = tls
        self._host = host
        self._port = port
        self._http2 = http2
        self._graceful_timeout = graceful_timeout
        self._keep_alive_timeout = keep_alive_timeout
        self._backlog = backlog
        self._nursery_manager: contextlib.AbstractAsyncContextManager[trio.Nursery] | None = None
        self._nursery: trio.Nursery | None = None
        self._server: SimServer | None = None
        self._tmpdir: str | None = None
        self._lifespan: _Lifespan | None = None
        self._terminate: Callable[[], Awaitable[None]] | None = None
        self._listener_scope: trio.CancelScope | None = None
        self._registry: Registry | None = None

    async def __aenter__(self) -> SimServer:
        require_sim_extra(tls=self._tls)
        from hypercorn.trio.worker_context import WorkerContext

        config = self._config if self._config is not None else SimConfig()
        if config.faults.seed is None:
            config.faults.seed = config.seed
        inner: ASGIApp = self._app if self._app is not None else cast(ASGIApp, create_app(config))
        stats = SimStats()
        registry = Registry(stats)
        asgi_app = StatsMiddleware(
            FaultMiddleware(inner, lambda: config.faults, connections=registry, counters=stats), stats
        )
        ssl_context: ssl.SSLContext | None = None
        ca_pem: bytes | None = None
        ca_path: Path | None = None
        if self._tls:
            ssl_context, ca_pem = _make_tls(self._host, self._http2)
            self._tmpdir = tempfile.mkdtemp(prefix="tinkex-sim-")
            ca_path = _write_ca_file(self._tmpdir, ca_pem)
        try:
            sock = await _bound_socket(self._host, self._port, self._backlog)
        except BaseException:
            self._cleanup_tmp()
            raise
        bound_port = int(sock.getsockname()[1])
        listener = Listener(trio.SocketListener(sock), registry, ssl_context)
        context = WorkerContext(None)
        handle = _connection_handler(_HypercornApp(asgi_app), self._hypercorn_config(), context, registry)
        await self._start(asgi_app, handle, listener)

        async def terminate() -> None:
            await context.terminated.set()

        self._terminate = terminate
        scheme = "https" if self._tls else "http"
        url_host = _url_host(self._host)
        self._server = SimServer(
            base_url=f"{scheme}://{_format_host(url_host)}:{bound_port}",
            host=url_host,
            port=bound_port,
            tls=self._tls,
            http2=self._http2,
            config=config,
            app=inner,
            asgi_app=asgi_app,
            stats=stats,
            ca_pem=ca_pem,
            ca_pem_path=ca_path,
            _registry=registry,
        )
        self._registry = registry
        return self._server

    def _hypercorn_config(self) -> Any:
        from hypercorn.config import Config as HypercornConfig

        hc = HypercornConfig()
        hc.accesslog = None
        if _LOG.level == logging.NOTSET:
            _LOG.setLevel(logging.ERROR)
        hc.errorlog = _LOG
        hc.keep_alive_timeout = self._keep_alive_timeout
        hc.graceful_timeout = self._graceful_timeout
        hc.include_server_header = False
        return hc

    async def _start(
        self, asgi_app: ASGIApp, handle: Callable[[trio.abc.Stream], Awaitable[None]], listener: Listener
    ) -> None:
        """Open the nursery, run the app's lifespan startup, then accept connections."""
        self._nursery_manager = trio.open_nursery()
        nursery = await self._nursery_manager.__aenter__()
        self._nursery = nursery
        try:
            lifespan = _Lifespan(asgi_app)
            self._lifespan = lifespan
            nursery.start_soon(lifespan.run)
            await lifespan.startup(limit_s=60.0)

            async def serve_connections(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
                with trio.CancelScope() as scope:
                    task_status.started(scope)
                    await trio.serve_listeners(handle, [listener], handler_nursery=nursery)

            self._listener_scope = await nursery.start(serve_connections)
        except BaseException as exc:
            nursery.cancel_scope.cancel()
            await self._close_nursery(exc)
            raise

    async def _close_nursery(self, exc: BaseException | None) -> None:
        manager = self._nursery_manager
        self._nursery_manager = None
        self._nursery = None
        self._cleanup_tmp()
        if manager is not None:
            if exc is None:
                await manager.__aexit__(None, None, None)
            else:
                await manager.__aexit__(type(exc), exc, exc.__traceback__)

    def _cleanup_tmp(self) -> None:
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        nursery = self._nursery
        assert nursery is not None
        with trio.CancelScope(shield=True):
            # Stop accepting, let idle keep-alive connections close, give busy ones a moment, then cancel the rest.
            if self._listener_scope is not None:
                self._listener_scope.cancel()
            if self._terminate is not None:
                await self._terminate()
            registry = self._registry
            if registry is not None:
                with trio.move_on_after(self._graceful_timeout):
                    await registry.wait_empty()
                registry.abort_all()
            if self._lifespan is not None:
                await self._lifespan.shutdown(limit_s=self._graceful_timeout)
            nursery.cancel_scope.cancel()
        # The body's exception (if any) is not the nursery's business: it propagates unwrapped.
        try:
            await self._close_nursery(None)
        except BaseExceptionGroup as group:
            # Ctrl-C lands in whichever task runs, often one of ours (a connection handler): it leaves as the one
            # KeyboardInterrupt a program expects, never as a nested group of them.
            if not is_interruption(group) or not any(isinstance(e, KeyboardInterrupt) for e in leaves(group)):
                raise
            if isinstance(exc, KeyboardInterrupt):
                reraise(exc)
            raise KeyboardInterrupt from None
        return False


class _HypercornApp:
    """hypercorn's app-wrapper calling convention (scope, receive, send, sync_spawn, call_soon) around an ASGI app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send, sync_spawn: Any, call_soon: Any) -> None:
        await self.app(scope, receive, send)


def open_sim_server(
    config: SimConfig | None = None,
    *,
    tls: bool = False,
    host: str = "127.0.0.1",
    port: int = 0,
    http2: bool = True,
    app: ASGIApp | None = None,
    graceful_timeout: float = 1.0,
    keep_alive_timeout: float = 75.0,
    backlog: int = 1024,
) -> contextlib.AbstractAsyncContextManager[SimServer]:
    """Serve the simulator on a real socket for the duration of an ``async with`` block (trio only).

    ``port=0`` picks a free port (see `SimServer.port` / `SimServer.base_url`). By default it serves plain HTTP, so
    ``open_session(api_key="tml-...", base_url=server.base_url)`` works as is. With ``tls`` the server presents a
    certificate from a fresh trustme CA (trust it with `SimServer.client_ssl_context` or
    ``SSL_CERT_FILE=<SimServer.ca_pem_path>``), and offers HTTP/2 through ALPN when ``http2``; without TLS it speaks
    HTTP/1.1 (and HTTP/2 with prior knowledge). ``app`` serves another ASGI app instead of ``create_app(config)``,
    still behind the stats and fault middleware. On exit, idle connections are closed, busy ones get
    ``graceful_timeout`` seconds, then everything is cancelled.

    When ``config.faults.seed`` is None it is set to ``config.seed``, so injected faults are reproducible too.

    Requires the ``sim`` extra (hypercorn, trustme).
    """
    return _ServerManager(
        config,
        app=app,
        tls=tls,
        host=host,
        port=port,
        http2=http2,
        graceful_timeout=graceful_timeout,
        keep_alive_timeout=keep_alive_timeout,
        backlog=backlog,
    )


# -- `tinkex-trio serve` --------------------------------------------------------------------------------------------


def _write_text(path: str, text: str) -> Path:
    resolved = Path(path).resolve()
    resolved.write_text(text)
    return resolved


async def _serve_forever(
    *, host: str, port: int, tls: bool, ca_file: str, faults_path: str | None, seed: int | None, http2: bool
) -> None:
    config = SimConfig() if seed is None else SimConfig(seed=seed)
    if faults_path is not None:
        config.faults = FaultConfig.from_toml(faults_path)
    if seed is not None:
        config.faults.seed = seed
    # SIGINT/SIGTERM arrive here (not as a KeyboardInterrupt in whichever task runs), so the stop is orderly.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_sim_server(config, tls=tls, host=host, port=port, http2=http2) as server:
            print(f"tinkex-trio sim: serving on {server.base_url}", flush=True)
            if server.ca_pem is not None:
                ca_path = _write_text(ca_file, server.ca_pem.decode("ascii"))
                print(f"tinkex-trio sim: CA certificate written to {ca_path} (SSL_CERT_FILE={ca_path})", flush=True)
                print(server.ca_pem.decode("ascii"), end="", flush=True)
            print("tinkex-trio sim: press Ctrl-C to stop", flush=True)
            async for _signum in signals:
                break


def run_serve(
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    tls: bool = False,
    ca_file: str = "./tinkex-sim-ca.pem",
    faults_path: str | None = None,
    seed: int | None = None,
    http2: bool = True,
) -> int:
    """The ``tinkex-trio serve`` command: serve until SIGINT (Ctrl-C), then stop cleanly and return 0."""
    try:
        trio.run(
            partial(
                _serve_forever,
                host=host,
                port=port,
                tls=tls,
                ca_file=ca_file,
                faults_path=faults_path,
                seed=seed,
                http2=http2,
            )
        )
    except KeyboardInterrupt:
        pass  # Ctrl-C before the signal receiver was installed
    except BaseExceptionGroup as group:
        _, rest = group.split(KeyboardInterrupt)
        if rest is not None:
            raise
    except (OSError, ValueError) as exc:
        print(f"tinkex-trio serve: {exc}", file=sys.stderr)
        return 1
    print("tinkex-trio sim: stopped", flush=True)
    return 0


@contextlib.contextmanager
def sim_server_in_thread(
    config: SimConfig | None = None, *, tls: bool = False, host: str = "127.0.0.1", port: int = 0
) -> Generator[SimServer]:
    """`open_sim_server` for programs that are not Trio programs: the server runs in a trio thread of its own for
    the duration of a ``with`` block (plain HTTP by default, as a blocking session expects)::

        with sim_server_in_thread() as server, blocking.open_session("tml-any", server.base_url) as session:
            ...

    Change ``server.config.faults`` from any thread while it runs. Requires the ``sim`` extra."""
    from tinkex_trio._portal import Portal  # only here: the simulator's package does not need threads otherwise

    portal = Portal(lambda: open_sim_server(config, tls=tls, host=host, port=port), name="tinkex-sim-server")
    try:
        yield portal.session
    finally:
        portal.close()
