"""The public surface is a contract: this test locks it. Adding a name means adding it here on purpose."""

import subprocess
import sys

import tinkex_trio as tx

EXPECTED = {
    "APIFuture",
    "AdamParams",
    "BatchingConfig",
    "CircuitBreakerConfig",
    "Config",
    "Datum",
    "DimuonParams",
    "EncodedTextChunk",
    "ForwardBackwardOutput",
    "ImageChunk",
    "LoraConfig",
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
    import inspect

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
    for cls in (
        e.ResponseValidationError,
        e.RequestFailedError,
        e.CircuitOpenError,
        e.SessionExpiredError,
        e.ConfigError,
    ):
        assert issubclass(cls, e.TinkexError)


def test_importing_the_library_does_not_import_the_simulator() -> None:
    code = "import sys, tinkex_trio; assert 'tinkex_trio.sim' not in sys.modules; assert 'hypercorn' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
