"""Errors (and public values) pickle: to another process and back, to an equal object of the same public class.

Each round trip goes through a fresh interpreter, which loads the pickle with nothing of tinkex_trio imported yet: the
class must be found at the path the pickle names, and rebuilt from the pickle alone.
"""

from __future__ import annotations

import inspect
import pickle
import subprocess
import sys
from typing import Any

import pytest

import tinkex_trio.errors as e

# The child loads what it is given and sends back its own pickle of it.
_ECHO = "import pickle, sys; sys.stdout.buffer.write(pickle.dumps(pickle.loads(sys.stdin.buffer.read())))"


def _through_another_process(values: list[Any]) -> list[Any]:
    done = subprocess.run([sys.executable, "-c", _ECHO], input=pickle.dumps(values), capture_output=True, check=True)
    return pickle.loads(done.stdout)


def _state(value: Any) -> Any:
    """What must survive a round trip: an exception's class, args and attributes (errors inside, recursively)."""
    if isinstance(value, BaseException):
        return (type(value), value.args, {k: _state(v) for k, v in vars(value).items()})
    if isinstance(value, tuple | list):
        return type(value)(_state(v) for v in value)
    return value


ERROR_SAMPLES: list[e.TinkexError] = [
    e.TinkexError("base"),
    e.ConfigError("bad key", key="retry.max_retries"),
    e.InvalidArgumentError("bad", argument="data[3]"),
    e.InvalidArgumentTypeError("wrong type", argument="data"),
    e.APIError("api", request_id="req-1"),
    e.APIStatusError("teapot", status_code=418, body={"detail": "short and stout"}, headers={"X-Request-Id": "r"}),
    e.BadRequestError(status_code=400, body="bad"),
    e.AuthenticationError(status_code=401),
    e.BillingError(status_code=402),
    e.PermissionDeniedError(status_code=403),
    e.NotFoundError(status_code=404),
    e.ConflictError(status_code=409),
    e.GoneError(status_code=410),
    e.UnprocessableEntityError(status_code=422),
    e.RateLimitError(status_code=429, retry_after=2.5),
    e.InternalServerError(status_code=503, request_id="req-2"),
    e.APIConnectionError(),
    e.APITimeoutError(request_id="req-3"),
    e.TLSError("certificate verify failed"),
    e.ResponseValidationError("not JSON", field="$.sequences[0]", body=b"<html>"),
    e.ResponseTooLargeError("too large", limit=10, size=11, body=b"x" * 11),
    e.RequestFailedError("failed", request_id="req-4", category="user"),
    e.CircuitOpenError(retry_after=3.0),
    e.SessionExpiredError("expired"),
    e.SessionClosedError("closed"),
    e.SequenceInDoubtError("in doubt", model_id="m", seq_ids=(4, 5), operation="forward_backward"),
    e.PartiallyAppliedError("partly", applied=((0, 8),), failed=(((8, 16), e.APITimeoutError()),)),
    e.TrainingHaltedError("halted", model_id="m", operation="forward_backward_custom"),
    e.TraceExportError("export failed", session_id="s", status="failed", error="no space left"),
    e.BatchItemTooLargeError("too large", index=3, datum_index=1, size=9_000_000, limit=5_000_000),
    e.CircuitOpenError.rejected(float("inf"), "svc"),
]


def test_every_error_class_has_a_sample() -> None:
    classes = {obj for obj in vars(e).values() if inspect.isclass(obj) and issubclass(obj, e.TinkexError)}
    assert classes == {type(sample) for sample in ERROR_SAMPLES}


def test_errors_round_trip_through_another_process() -> None:
    back = _through_another_process(ERROR_SAMPLES)
    assert [_state(x) for x in back] == [_state(x) for x in ERROR_SAMPLES]
    for original, copy in zip(ERROR_SAMPLES, back, strict=True):
        assert str(copy) == str(original)
        assert repr(copy) == repr(original)


def test_unpickling_does_not_run_init_again() -> None:
    error = e.APIStatusError(status_code=500)
    error.add_note("while doing something")
    copy = pickle.loads(pickle.dumps(error))
    assert copy.status_code == 500
    assert copy.__notes__ == ["while doing something"]
    with pytest.raises(e.APIStatusError, match="Error code: 500"):
        raise copy


def test_public_values_pickle_by_their_public_path() -> None:
    import tinkex_trio as tx

    values: list[Any] = [
        tx.AdamParams(learning_rate=1e-3),
        tx.ModelInput.from_ints([1, 2, 3]),
        tx.SamplingParams(max_tokens=3),
        tx.BreakerState.OPEN,
        tx.RetryConfig(),
        tx.CircuitBreakerConfig(),
        tx.types.RequestErrorCategory.USER,
        tx.Session,
        tx.datum,
    ]
    data = pickle.dumps(values)
    # The pickle names tinkex_trio.Session and tinkex_trio.types.AdamParams, never a private module.
    assert b"tinkex_trio._" not in data
    assert b"tinkex_trio.types._" not in data
    assert _through_another_process(values) == values
