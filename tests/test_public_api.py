"""The public surface is a contract: this test locks it. Adding a name means adding it here on purpose."""

import inspect
import subprocess
import sys

import tinkex_trio as tx

EXPECTED = {
    "APIFuture",
    "AdamParams",
    "BatchingConfig",
    "BreakerRegistry",
    "BreakerState",
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "Config",
    "Datum",
    "DimuonParams",
    "EncodedTextChunk",
    "ForwardBackwardOutput",
    "ImageChunk",
    "LoraConfig",
    "Metrics",
    "MetricsConfig",
    "ModelInput",
    "OptimStepResponse",
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
    "__version__",
    "breakers",
    "datum",
    "errors",
    "open_session",
    "types",
}


def test_all_is_locked() -> None:
    assert set(tx.__all__) == EXPECTED
    assert len(tx.__all__) == len(EXPECTED)


def test_every_exported_name_exists() -> None:
    for name in tx.__all__:
        assert getattr(tx, name) is not None, name


def test_design_contract_names_and_signatures() -> None:
    sig = inspect.signature(tx.open_session)
    params = list(sig.parameters.values())
    assert [p.name for p in params[:2]] == ["api_key", "base_url"]
    for name in ("config", "tags", "user_metadata"):
        assert sig.parameters[name].kind is inspect.Parameter.KEYWORD_ONLY
    for name in ("create_lora_training_client", "create_training_client_from_state", "create_sampling_client"):
        assert inspect.iscoroutinefunction(getattr(tx.Session, name)), name
    for name in (
        "forward",
        "forward_backward",
        "optim_step",
        "submit_forward_backward",
        "submit_optim_step",
        "forward_backward_batch",
        "optim_step_batch",
        "save_state",
        "load_state",
        "save_weights_for_sampler",
        "save_weights_and_get_sampling_client",
        "get_info",
    ):
        assert inspect.iscoroutinefunction(getattr(tx.TrainingClient, name)), name
    for name in ("sample", "compute_logprobs"):
        assert inspect.iscoroutinefunction(getattr(tx.SamplingClient, name)), name
    assert set(inspect.signature(tx.TrainingClient.forward_backward).parameters) >= {
        "data",
        "loss_fn",
        "loss_fn_config",
    }
    assert {"num_samples", "sampling_params"} <= set(inspect.signature(tx.SamplingClient.sample).parameters)
    assert {"with_optimizer"} <= set(inspect.signature(tx.TrainingClient.load_state).parameters)


def test_design_contract_metrics_and_breaker() -> None:
    m = tx.Metrics()
    m.increment("name")
    m.set_gauge("g", 1.0)
    m.record_histogram("tinkex_request_duration_ms", 45.0)
    snapshot = m.get_all_metrics()
    assert snapshot["counters"]["name"] == 1
    assert snapshot["gauges"]["g"] == 1.0
    hist = snapshot["histograms"]["tinkex_request_duration_ms"]
    for key in ("count", "min", "max", "mean", "stddev", "p50", "p90", "p95", "p99", "p999"):
        assert key in hist, key
    assert "tinkex_request_duration_ms" in m.to_prometheus()
    m.reset()
    assert m.get_all_metrics()["counters"] == {}
    breaker = tx.breakers().for_key("https://example.test", "tml-contract-key")
    assert breaker is tx.breakers().for_key("https://example.test/", "tml-contract-key")
    assert breaker.state is tx.BreakerState.CLOSED
    assert {s.name for s in tx.BreakerState} == {"CLOSED", "OPEN", "HALF_OPEN"}
    assert isinstance(breaker, tx.CircuitBreaker)
    assert "tml-contract-key" not in repr(breaker)
    assert inspect.iscoroutinefunction(breaker.call)


def test_errors_hierarchy() -> None:
    e = tx.errors
    assert issubclass(e.APIError, e.TinkexError)
    assert issubclass(e.APIStatusError, e.APIError)
    for cls in (
        e.BadRequestError,
        e.AuthenticationError,
        e.PermissionDeniedError,
        e.NotFoundError,
        e.ConflictError,
        e.UnprocessableEntityError,
        e.RateLimitError,
        e.InternalServerError,
    ):
        assert issubclass(cls, e.APIStatusError)
    assert issubclass(e.APITimeoutError, e.APIConnectionError)
    assert issubclass(e.APIConnectionError, e.APIError)
    assert issubclass(e.TLSError, e.APIConnectionError)
    assert issubclass(e.ResponseTooLargeError, e.ResponseValidationError)
    for cls in (
        e.ResponseValidationError,
        e.RequestFailedError,
        e.CircuitOpenError,
        e.SessionExpiredError,
        e.ConfigError,
        e.InvalidArgumentError,
    ):
        assert issubclass(cls, e.TinkexError)
    assert issubclass(e.InvalidArgumentError, ValueError)
    assert issubclass(e.InvalidArgumentTypeError, e.InvalidArgumentError)
    assert issubclass(e.InvalidArgumentTypeError, TypeError)


def test_importing_the_library_does_not_import_the_simulator() -> None:
    code = "import sys, tinkex_trio; assert 'tinkex_trio.sim' not in sys.modules; assert 'hypercorn' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_session_attributes_of_the_contract(autojump_clock: object) -> None:
    from _simkit import sim_stack

    async with sim_stack() as sim, sim.session() as session:
        assert isinstance(session, tx.Session)
        assert session.session_id
        assert isinstance(session.config, tx.Config)
        assert isinstance(session.metrics, tx.Metrics)
        assert isinstance(session.breaker, tx.CircuitBreaker)
        assert session.breaker.state is tx.BreakerState.CLOSED
        assert isinstance(session.telemetry, tx.TelemetryBus)
        assert isinstance(session.rest, tx.RestClient)
        caps = await session.get_server_capabilities()
        assert caps.supported_models
        counters = session.metrics.get_all_metrics()["counters"]
        assert any(name.startswith("tinkex_requests_total") for name in counters)
