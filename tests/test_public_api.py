"""The public surface is a contract: these tests lock it. Adding a name means adding it here on purpose.

Four modules are public: ``tinkex_trio``, ``tinkex_trio.types``, ``tinkex_trio.errors`` and ``tinkex_trio.sim``. For
each, ``__all__`` is locked here, and it must be exactly the public names of the module's namespace (as httpx's
``test_exported_members``), so that nothing is exported by accident; every class and function in it names a public
module as its ``__module__``, where pickle and ``help()`` find it.
"""

import ast
import inspect
import subprocess
import sys
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import msgspec
import pytest

import tinkex_trio as tx
import tinkex_trio.blocking
import tinkex_trio.sim

EXPECTED = {
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
}

EXPECTED_TYPES = {
    "AccessScope",
    "AccessibleSearchOwner",
    "ActiveSessionStatusQuery",
    "AdamOptimizerConfig",
    "AdamParams",
    "AssignSessionProjectRequest",
    "AuditEventType",
    "AuditLogEntry",
    "AuditLogResponse",
    "AuthTokenRequest",
    "AuthTokenResponse",
    "BillingEventInfo",
    "BillingUsageEvent",
    "BillingUsageResponse",
    "BillingUsageSession",
    "CancelFutureRequest",
    "CancelledSessionStatusQuery",
    "Checkpoint",
    "CheckpointBillingEvent",
    "CheckpointType",
    "CheckpointsListResponse",
    "ClientConfigRequest",
    "ClientConfigResponse",
    "ClientDynamicConfigRequest",
    "ClientDynamicConfigResponse",
    "ClientFinishReason",
    "ClientFinishReasonType",
    "ClientFinishedSessionStatusQuery",
    "ClientSessionFinished",
    "CopyWeightsRequest",
    "CopyWeightsResponse",
    "CreateCustomLossRequest",
    "CreateCustomLossResponse",
    "CreateModelRequest",
    "CreateModelResponse",
    "CreateSamplingSessionRequest",
    "CreateSamplingSessionResponse",
    "CreateSessionRequest",
    "CreateSessionResponse",
    "CurrentCheckpointStorageUsageItem",
    "CurrentCheckpointStorageUsageResponse",
    "Cursor",
    "CustomLossGraph",
    "CustomLossInput",
    "CustomLossNode",
    "CustomLossNodeOp",
    "Datum",
    "DimuonOptimizerConfig",
    "DimuonParams",
    "DmelChunk",
    "EncodedTextChunk",
    "EventType",
    "ExternalWeightsUrlsResponse",
    "FailedSessionStatusQuery",
    "FinishReasonType",
    "FinishSessionRequest",
    "ForwardBackwardInput",
    "ForwardBackwardOutput",
    "ForwardBackwardRequest",
    "ForwardRequest",
    "FutureCompleteMetadata",
    "FutureCompletion",
    "FutureFailed",
    "FutureFinished",
    "FutureRetrieveRequest",
    "FuturesRetrieveRequest",
    "FuturesRetrieveResponse",
    "GenericEvent",
    "GetInfoRequest",
    "GetInfoResponse",
    "GetSamplerResponse",
    "GetServerCapabilitiesResponse",
    "GetSessionResponse",
    "HealthResponse",
    "ImageAssetPointerChunk",
    "ImageChunk",
    "ImageFormat",
    "JSONBytes",
    "JoinSamplingSessionRequest",
    "JoinSamplingSessionResponse",
    "LOSS_FN_INPUT_DTYPES",
    "ListSessionsResponse",
    "LoadWeightsRequest",
    "LoadWeightsResponse",
    "LoraConfig",
    "LossFnOutput",
    "LossFnType",
    "ModelData",
    "ModelInput",
    "ModelInputChunk",
    "OptimStepRequest",
    "OptimStepResponse",
    "OptimizerConfig",
    "OwnSearchOwner",
    "PromptAltTokens",
    "ProvenanceRun",
    "ProvenanceSpan",
    "QueueState",
    "RequestErrorCategory",
    "RequestFailedResponse",
    "RequestType",
    "SampleRequest",
    "SampleResponse",
    "SampledSequence",
    "SamplingClientKind",
    "SamplingParams",
    "SamplingPrefillBillingEvent",
    "SamplingSampleBillingEvent",
    "SamplingSessionFuturesTarget",
    "SaveWeightsExternalRequest",
    "SaveWeightsExternalResponse",
    "SaveWeightsForSamplerRequest",
    "SaveWeightsForSamplerResponse",
    "SaveWeightsRequest",
    "SaveWeightsResponse",
    "SearchOwner",
    "SessionActive",
    "SessionCancelled",
    "SessionEndEvent",
    "SessionFailed",
    "SessionFailedReason",
    "SessionFinishReason",
    "SessionHeartbeatRequest",
    "SessionHeartbeatResponse",
    "SessionSearchCursor",
    "SessionSearchRequest",
    "SessionSearchResponse",
    "SessionStartEvent",
    "SessionStatus",
    "SessionStatusQuery",
    "SessionSummary",
    "SessionTraceExportResponse",
    "SetCheckpointTtlRequest",
    "Severity",
    "StopReason",
    "StorageBillingEvent",
    "SupportedModel",
    "TelemetryBatch",
    "TelemetryEvent",
    "TelemetryResponse",
    "TelemetrySendRequest",
    "TensorData",
    "TensorDtype",
    "TinkerPath",
    "TopkEntry",
    "TopkLogprobs",
    "TrainingBillingEvent",
    "TrainingRun",
    "TrainingRunsResponse",
    "TryAgainResponse",
    "UnhandledExceptionEvent",
    "UnloadModelRequest",
    "UnloadModelResponse",
    "UntypedAPIFuture",
    "UserSearchOwner",
    "WeightsInfoRequest",
    "WeightsInfoResponse",
    "WhoamiResponse",
    "convert",
    "datum",
    "decode",
    "decode_any",
    "decode_json",
    "decoder_for",
    "encode",
    "encode_json",
    "parse_future_reply",
    "tensor_container_shape",
    "to_builtins",
    "to_tensor_data",
}

EXPECTED_ERRORS = {
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BatchItemTooLargeError",
    "BillingError",
    "CircuitOpenError",
    "ConfigError",
    "ConflictError",
    "GoneError",
    "InternalServerError",
    "InvalidArgumentError",
    "InvalidArgumentTypeError",
    "NotFoundError",
    "PartiallyAppliedError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestErrorCategory",
    "RequestFailedError",
    "ResponseTooLargeError",
    "ResponseValidationError",
    "SequenceInDoubtError",
    "SessionClosedError",
    "SessionExpiredError",
    "TLSError",
    "TinkexError",
    "TraceExportError",
    "TrainingHaltedError",
    "UnprocessableEntityError",
    "redact",
    "status_error_class",
}

EXPECTED_SIM = {
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
}

EXPECTED_BLOCKING = {"Future", "RestClient", "SamplingClient", "Session", "TrainingClient", "open_session"}

PUBLIC_MODULES: dict[ModuleType, set[str]] = {
    tx: EXPECTED,
    tx.types: EXPECTED_TYPES,
    tx.errors: EXPECTED_ERRORS,
    tinkex_trio.sim: EXPECTED_SIM,
    tinkex_trio.blocking: EXPECTED_BLOCKING,
}
MODULE_IDS = [module.__name__ for module in PUBLIC_MODULES]


def _inside(module_name: str) -> bool:
    return module_name == "tinkex_trio" or module_name.startswith("tinkex_trio.")


def _module_level(body: list[ast.stmt]) -> list[ast.stmt]:
    """The statements run when the module is imported (under ``if``/``try``/``with`` too, not in a def or class)."""
    out: list[ast.stmt] = []
    for node in body:
        out.append(node)
        if isinstance(node, ast.If | ast.Try | ast.With):
            for block in ("body", "orelse", "finalbody"):
                out += _module_level(getattr(node, block, []))
            for handler in getattr(node, "handlers", []):
                out += _module_level(handler.body)
    return out


def _public_namespace(module: ModuleType) -> set[str]:
    """The names a user sees in ``dir(module)`` that are the module's own, defined or re-exported.

    Not counted: names bound by importing from outside the package (``Any``, ``enum``, ``annotations``: the
    module's own tools), and submodules that the import system binds on a package (``tinkex_trio._training`` once
    anything imports it) unless the module's source imports them by name (``from tinkex_trio import errors``).
    """
    assert module.__file__ is not None
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    imported: set[str] = set()
    imported_from_outside: set[str] = set()
    for node in _module_level(tree.body):
        if isinstance(node, ast.Import):
            for alias in node.names:
                bound = alias.asname or alias.name.partition(".")[0]
                imported.add(bound)
                if not _inside(alias.name):
                    imported_from_outside.add(bound)
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                bound = alias.asname or alias.name
                imported.add(bound)
                if node.level == 0 and not _inside(node.module or ""):
                    imported_from_outside.add(bound)
    names = {name for name in vars(module) if not name.startswith("_")} - imported_from_outside
    return {
        name
        for name in names
        if not (
            inspect.ismodule(value := getattr(module, name))
            and value.__name__ == f"{module.__name__}.{name}"
            and name not in imported
        )
    } | {name for name in vars(module) if name.startswith("__") and name in module.__all__}


@pytest.mark.parametrize("module", PUBLIC_MODULES, ids=MODULE_IDS)
def test_all_is_locked(module: ModuleType) -> None:
    assert sorted(module.__all__) == sorted(PUBLIC_MODULES[module])


@pytest.mark.parametrize("module", PUBLIC_MODULES, ids=MODULE_IDS)
def test_all_is_exactly_the_public_namespace(module: ModuleType) -> None:
    assert sorted(module.__all__) == sorted(_public_namespace(module))


@pytest.mark.parametrize("module", PUBLIC_MODULES, ids=MODULE_IDS)
def test_exported_classes_and_functions_name_a_public_module(module: ModuleType) -> None:
    public = {m.__name__ for m in PUBLIC_MODULES}
    for name in module.__all__:
        obj = getattr(module, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue  # modules, constants, Literal aliases: they have no module of their own
        where = f"{module.__name__}.{name}"
        assert obj.__module__ in public, f"{where} says it is {obj.__module__}.{obj.__qualname__}"
        # Names of tinkex_trio.types and tinkex_trio.errors keep that module wherever they are exported too.
        assert obj.__module__ in (module.__name__, "tinkex_trio.types", "tinkex_trio.errors"), where
        # Where pickle (and help(), and a reader of a traceback) looks it up:
        assert getattr(sys.modules[obj.__module__], obj.__qualname__) is obj, where


@pytest.mark.parametrize("module", PUBLIC_MODULES, ids=MODULE_IDS)
def test_annotations_of_exported_classes_still_resolve(module: ModuleType) -> None:
    """msgspec and typing.get_type_hints evaluate string annotations in ``sys.modules[cls.__module__]``: the public
    module, once ``__module__`` names it, where ``Any`` and private helper types are not defined."""
    # SimServer's annotations name types imported only for type checkers: they never resolved.
    never_resolved = {tinkex_trio.sim.SimServer}
    for name in module.__all__:
        obj = getattr(module, name)
        if inspect.isclass(obj) and obj not in never_resolved:
            typing.get_type_hints(obj, include_extras=True)
            if issubclass(obj, msgspec.Struct):
                assert [f.name for f in msgspec.structs.fields(obj)] == list(obj.__struct_fields__)


# Classes that users get from the library, never construct: their constructors take private plumbing.
MADE_BY_THE_LIBRARY = {
    tx.Session,
    tx.RestClient,
    tx.TrainingClient,
    tx.SamplingClient,
    tx.APIFuture,
    tinkex_trio.sim.SimServer,
}  # open_session, session.rest, session.create_*_client / save_weights_and_get_sampling_client, open_sim_server

# Private types still in public signatures -> where. The test fails when one is gone: then remove it here.
KNOWN_PRIVATE_IN_SIGNATURES = {
    "tinkex_trio._metrics._series.Counter": {"tinkex_trio.Metrics.counter", "tinkex_trio.Metrics.families"},
    "tinkex_trio._metrics._series.Gauge": {"tinkex_trio.Metrics.gauge", "tinkex_trio.Metrics.families"},
    "tinkex_trio._metrics._series.Histogram": {"tinkex_trio.Metrics.histogram", "tinkex_trio.Metrics.families"},
    "tinkex_trio.sim._asgi.Request": {"tinkex_trio.sim.SimApp.handle"},
    "tinkex_trio.sim._asgi.Response": {"tinkex_trio.sim.SimApp.handle"},
    "tinkex_trio.sim._fault_middleware.ConnectionControl": {"tinkex_trio.sim.FaultMiddleware.__init__"},
    "tinkex_trio.sim._fault_middleware.FaultCounters": {"tinkex_trio.sim.FaultMiddleware.__init__"},
    "tinkex_trio.sim._model_types.ModelConfig": {"tinkex_trio.sim.SimConfig.__init__"},
    # The blocking twins are made by blocking.open_session (and by each other), never by users.
    "tinkex_trio._portal.Portal": {
        f"tinkex_trio.blocking.{name}.__init__"
        for name in ("Future", "RestClient", "SamplingClient", "Session", "TrainingClient")
    },
}


def _classes_in(annotation: object) -> Iterator[type]:
    if isinstance(annotation, type):
        yield annotation
    origin = typing.get_origin(annotation)
    if isinstance(origin, type):
        yield origin
    for arg in typing.get_args(annotation):
        for inner in arg if isinstance(arg, list) else [arg]:  # Callable[[A, B], R] has a list of arguments
            yield from _classes_in(inner)


def _public_callables() -> Iterator[tuple[str, Callable[..., object]]]:
    """Every public function, and every public method, property and constructor of a public class."""
    for module in PUBLIC_MODULES:
        for name in module.__all__:
            obj = getattr(module, name)
            where = f"{module.__name__}.{name}"
            if inspect.isfunction(obj):
                yield where, obj
            elif inspect.isclass(obj) and obj.__module__ == module.__name__:
                for attr, value in vars(obj).items():
                    if attr.startswith("_") and not (attr == "__init__" and obj not in MADE_BY_THE_LIBRARY):
                        continue
                    if isinstance(value, property):
                        value = value.fget
                    elif isinstance(value, classmethod | staticmethod):
                        value = value.__func__
                    if inspect.isfunction(value):
                        yield f"{where}.{attr}", value


def test_public_signatures_use_public_types() -> None:
    public = {id(getattr(m, n)) for m in PUBLIC_MODULES for n in m.__all__}
    # Names imported only for type checkers (Session in training.py) resolve to the public objects.
    names = {n: getattr(m, n) for m in PUBLIC_MODULES for n in m.__all__}
    private: dict[str, set[str]] = {}
    for where, function in _public_callables():
        hints = typing.get_type_hints(function, localns=names, include_extras=True)
        for annotation in hints.values():
            for cls in _classes_in(annotation):
                if cls.__module__.partition(".")[0] == "tinkex_trio" and id(cls) not in public:
                    private.setdefault(f"{cls.__module__}.{cls.__qualname__}", set()).add(where)
    assert private == KNOWN_PRIVATE_IN_SIGNATURES


def test_public_signatures_check_sees_private_types() -> None:
    assert {tx.Permit, tx.CircuitBreakerConfig} <= set(
        _classes_in(typing.Callable[[tx.Permit], tx.CircuitBreakerConfig])
    )
    assert tx.PoolKind in set(_classes_in(tx.TransportFactory | None))
    assert ("tinkex_trio.open_session", tx.open_session) in list(_public_callables())
    assert any(where == "tinkex_trio.CircuitBreaker.before_call" for where, _ in _public_callables())
    assert not any(where == "tinkex_trio.Session.__init__" for where, _ in _public_callables())


def test_reprs_name_the_public_path() -> None:
    assert repr(tx.Session) == "<class 'tinkex_trio.Session'>"
    assert repr(tx.TrainingClient) == "<class 'tinkex_trio.TrainingClient'>"
    assert tx.open_session.__module__ == "tinkex_trio"
    assert repr(tx.AdamParams) == "<class 'tinkex_trio.types.AdamParams'>"
    assert repr(tx.types.Checkpoint) == "<class 'tinkex_trio.types.Checkpoint'>"
    assert repr(tx.types.RequestErrorCategory) == "<enum 'RequestErrorCategory'>"
    assert tx.types.RequestErrorCategory.__module__ == "tinkex_trio.errors"
    assert repr(tinkex_trio.sim.SimApp) == "<class 'tinkex_trio.sim.SimApp'>"


def test_public_namespace_sees_a_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above can fail: a public name bound by accident is seen, an import from outside is not."""
    monkeypatch.setattr(tx, "leaked", object(), raising=False)
    assert "leaked" in _public_namespace(tx)
    assert {"Any", "Mapping", "enum", "annotations"}.isdisjoint(_public_namespace(tx.errors))
    assert "training" not in _public_namespace(tx)


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
    assert "tinkex_request_duration_seconds_bucket" in m.to_prometheus()
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
