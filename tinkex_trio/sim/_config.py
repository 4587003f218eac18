"""Configuration of the simulated Tinker server.

:class:`SimConfig` is a plain mutable dataclass: ``app.config`` may be changed while the server runs (a test can
turn on a fault, lower the long-poll time or change the service time), and every request reads the values afresh.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tinkex_trio.sim._faults import FaultConfig
from tinkex_trio.sim._model_types import ModelConfig

__all__ = ["MAX_LONG_POLL_S", "ServiceTime", "SimConfig", "SupportedModel", "default_supported_models"]

MAX_LONG_POLL_S = 40.0
"""Upper bound of a ``retrieve_future`` long poll: the SDK's poll timeout is 45 s and a timeout counts as an error."""


@dataclass
class ServiceTime:
    """How long a request takes, in trio time: ``base_s + per_token_s * tokens``.

    Each training model runs its requests one at a time (in ``seq_id`` order); each sampling session runs up to
    ``workers_per_model`` samples at once.
    """

    base_s: float = 0.002
    per_token_s: float = 0.0
    workers_per_model: int = 4


@dataclass
class SupportedModel:
    """One entry of ``get_server_capabilities`` (every model is served by the same small simulator model)."""

    model_name: str
    max_context_length: int | None = 32768
    trainable: bool = True
    sampleable: bool = True
    arch: str = "sim-bigram"
    tokenizer_id: str | None = None
    """What ``get_info`` reports as ``model_data.tokenizer_id``; ``None`` → the model name."""


def default_supported_models() -> list[SupportedModel]:
    return [
        SupportedModel("Qwen/Qwen3-8B"),
        SupportedModel("Qwen/Qwen3-30B-A3B"),
        SupportedModel("Qwen/Qwen3-4B-Instruct-2507"),
        SupportedModel("meta-llama/Llama-3.2-1B"),
        SupportedModel("meta-llama/Llama-3.1-8B"),
    ]


@dataclass
class SimConfig:
    """Everything that shapes the simulated server's behaviour (see the field comments)."""

    seed: int = 0
    """Seeds ids, LoRA initialisation (when a request gives no seed) and injected faults. The frozen base models are
    seeded by ``model.seed``."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The numpy model's settings (vocabulary, hidden size, context window, default max_tokens)."""
    service: ServiceTime = field(default_factory=ServiceTime)
    queue_capacity: int = 1024
    """Above this many queued or running requests, ``try_again`` reports ``paused_capacity``."""
    long_poll_s: float = 30.0
    """How long ``retrieve_future`` holds a poll for an unfinished future (clamped to ``MAX_LONG_POLL_S``)."""
    complete_metadata_threshold_bytes: int = 1 << 20
    """Results larger than this are first answered with ``complete_metadata`` when the poll allows it."""
    client_config: dict[str, Any] = field(default_factory=dict[str, Any])
    """Overrides merged into the ``/client/config`` answer (e.g. ``{"fwdbwd_max_chunk_len": 2}``)."""
    dynamic_config: dict[str, Any] = field(default_factory=dict[str, Any])
    """Overrides merged into the ``/client/dynamic_config`` answer."""
    dynamic_config_enabled: bool = True
    """``False`` → ``/client/dynamic_config`` answers 404 (which the SDK accepts)."""
    jwt_auth_enabled: bool = False
    """``True`` → ``/client/config`` says ``pjwt_auth_enabled`` and ``/auth/token`` issues unsigned JWTs (else 404)."""
    jwt_lifetime_s: int = 3600
    telemetry_enabled: bool = True
    """``False`` → ``/telemetry`` answers 404."""
    supported_models: list[SupportedModel] = field(default_factory=default_supported_models)
    allow_unknown_base_models: bool = False
    """``True`` → any base model name is accepted (else create_model with an unlisted one is a 400)."""
    seq_gap_timeout_s: float | None = 120.0
    """An ordered lane waiting this long for a missing ``seq_id`` skips it (``None`` → wait forever)."""
    max_retained_futures: int = 20_000
    """Finished futures kept for polling; older ones are forgotten (polling them answers 410)."""
    max_retained_bytes: int = 512 * 1024 * 1024
    """Also forget the oldest finished futures when their encoded results exceed this many bytes."""
    compute_in_threads: bool = True
    """Run the numpy work in worker threads (always inline under trio's MockClock, which cannot see threads)."""
    owner: str = "sim-user"
    """``model_owner`` of training runs."""
    trace_export_build_s: float = 1.0
    """How long (trio time) a session's trace export job runs: ``trace_export`` answers ``pending`` until then."""
    trace_export_error: str | None = None
    """Not None → every trace export job fails with this error (``status: failed``)."""
    faults: FaultConfig = field(default_factory=FaultConfig)

    def __post_init__(self) -> None:
        if not 0 < self.long_poll_s < 45:
            raise ValueError("long_poll_s must be in (0, 45): the SDK gives up on a poll after 45 s")
        if self.queue_capacity < 0 or self.complete_metadata_threshold_bytes < 0:
            raise ValueError("queue_capacity and complete_metadata_threshold_bytes must be >= 0")
        if self.service.workers_per_model < 1:
            raise ValueError("service.workers_per_model must be >= 1")

    def effective_long_poll_s(self) -> float:
        return min(max(self.long_poll_s, 0.0), MAX_LONG_POLL_S)

    def find_model(self, name: str) -> SupportedModel | None:
        for entry in self.supported_models:
            if entry.model_name == name:
                return entry
        return None
