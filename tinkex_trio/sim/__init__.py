"""The simulated Tinker server: an ASGI app speaking the Tinker protocol, fault injection, and a loopback server.

``import tinkex_trio`` never imports this package. Serving (`open_sim_server`, ``tinkex-trio serve``) needs the
``sim`` extra (hypercorn, trustme), imported only when a server is opened.
"""

from tinkex_trio import _public
from tinkex_trio.sim._app import SimApp, create_app
from tinkex_trio.sim._config import ServiceTime, SimConfig, SupportedModel
from tinkex_trio.sim._fault_middleware import FaultMiddleware, SimulatedConnectionReset
from tinkex_trio.sim._faults import EndpointFaults, FaultConfig, Latency, ResolvedFaults, endpoint_name
from tinkex_trio.sim._server import SimExtraMissingError, SimServer, open_sim_server, sim_server_in_thread
from tinkex_trio.sim._stats import SimStats, StatsMiddleware

__all__ = [
    "EndpointFaults",
    "FaultConfig",
    "FaultMiddleware",
    "Latency",
    "ResolvedFaults",
    "ServiceTime",
    "SimApp",
    "SimConfig",
    "SimExtraMissingError",
    "SimServer",
    "SimStats",
    "SimulatedConnectionReset",
    "StatsMiddleware",
    "SupportedModel",
    "create_app",
    "endpoint_name",
    "open_sim_server",
    "sim_server_in_thread",
]

# tinkex_trio.sim.SimApp, not tinkex_trio.sim._app.SimApp, in reprs, tracebacks and pickles.
_public.fixup_module_metadata(__name__, __all__, globals())
