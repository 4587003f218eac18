"""tinkex_trio: a Trio-native client for the Tinker fine-tuning API.

::

    import trio
    import tinkex_trio as tx

    async def main() -> None:
        async with tx.open_session() as session:          # TINKER_API_KEY / TINKER_BASE_URL from the environment
            trainer = await session.create_lora_training_client("Qwen/Qwen3-8B", rank=32)
            out = await trainer.forward_backward(data, "cross_entropy")
            await trainer.optim_step(tx.AdamParams(learning_rate=1e-4))

    trio.run(main)

The public surface is exactly ``__all__``; everything in a module whose name starts with ``_`` is private.

Beyond sessions and clients: :class:`CircuitBreaker` with its vocabulary (:class:`Permit`, :class:`Verdict`,
:class:`Transition`, :class:`BreakerStats`), and ``open_session(transport_factory=...)``, a :data:`TransportFactory`
called with a :class:`PoolKind` to build that connection pool's httpx transport (tests: an in-process
``httpx.ASGITransport``).
"""

from tinkex_trio import _public, errors, types
from tinkex_trio._breaker import CircuitBreaker
from tinkex_trio._breaker_registry import BreakerRegistry, breakers
from tinkex_trio._breaker_types import BreakerState, BreakerStats, Permit, Transition
from tinkex_trio._breaker_verdict import Verdict
from tinkex_trio._config import (
    BatchingConfig,
    CircuitBreakerConfig,
    Config,
    MetricsConfig,
    PoolLimits,
    PoolsConfig,
    RetryConfig,
    TimeoutsConfig,
)
from tinkex_trio._futures import APIFuture
from tinkex_trio._loss_handles import LossHandle
from tinkex_trio._metrics import Metrics, MetricsCollector, serve_metrics
from tinkex_trio._pool_set import PoolKind, TransportFactory
from tinkex_trio._rest import RestClient
from tinkex_trio._sampling import SamplingClient
from tinkex_trio._session import Session, open_session
from tinkex_trio._telemetry import TelemetryBus, TelemetryEvent
from tinkex_trio._training import TrainingClient
from tinkex_trio._version import __version__
from tinkex_trio.types import (
    AdamParams,
    Datum,
    DimuonParams,
    EncodedTextChunk,
    ForwardBackwardOutput,
    ImageChunk,
    LoraConfig,
    ModelInput,
    OptimStepResponse,
    SampledSequence,
    SampleResponse,
    SamplingParams,
    StopReason,
    TensorData,
    datum,
)

__all__ = [
    "APIFuture",
    "AdamParams",
    "BatchingConfig",
    "BreakerRegistry",
    "BreakerState",
    "BreakerStats",
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "Config",
    "Datum",
    "DimuonParams",
    "EncodedTextChunk",
    "ForwardBackwardOutput",
    "ImageChunk",
    "LoraConfig",
    "LossHandle",
    "Metrics",
    "MetricsCollector",
    "MetricsConfig",
    "ModelInput",
    "OptimStepResponse",
    "Permit",
    "PoolKind",
    "PoolLimits",
    "PoolsConfig",
    "RestClient",
    "RetryConfig",
    "SampleResponse",
    "SampledSequence",
    "SamplingClient",
    "SamplingParams",
    "Session",
    "StopReason",
    "TelemetryBus",
    "TelemetryEvent",
    "TensorData",
    "TimeoutsConfig",
    "TrainingClient",
    "Transition",
    "TransportFactory",
    "Verdict",
    "__version__",
    "breakers",
    "datum",
    "errors",
    "open_session",
    "serve_metrics",
    "types",
]

# Last, so that every name above is bound: tinkex_trio.Session, not tinkex_trio._session.Session, in reprs,
# tracebacks and pickles. Names of tinkex_trio.types and tinkex_trio.errors keep those modules.
_public.fixup_module_metadata(__name__, __all__, globals())
