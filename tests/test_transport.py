"""Transport: headers, idempotency keys, retries (under MockClock), status -> error mapping, pools."""

from __future__ import annotations

import random
from collections.abc import Callable

import httpx
import pytest
import trio
import trio.testing

from tinkex_trio import errors
from tinkex_trio._config import Config
from tinkex_trio._pool_set import PoolKind
from tinkex_trio._telemetry import HTTP_REQUEST_EXCEPTION, HTTP_REQUEST_START, HTTP_REQUEST_STOP, RETRY, TelemetryEvent
from tinkex_trio._transport import USER_AGENT, Transport
from tinkex_trio.types import CreateSessionResponse

KEY = "tml-secret-transport-key-123"

Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """A scripted server: answers with the next response of ``script`` (the last one repeats) and records requests."""

    def __init__(self, *script: httpx.Response | Exception) -> None:
        self.script = list(script)
        self.requests: list[httpx.Request] = []
        self.times: list[float] = []
        self.pools: list[PoolKind] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.times.append(trio.current_time())
        item = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(item, Exception):
            raise item
        return item

    def factory(self, pool: PoolKind) -> httpx.AsyncBaseTransport:
        self.pools.append(pool)
        return httpx.MockTransport(self.handler)


def make(rec: Recorder, **overrides: object) -> Transport:
    config = Config.create(api_key=KEY, base_url="http://sim.test/", env={}, **overrides)
    return Transport(config, transport_factory=rec.factory, rng=random.Random(0))


def ok(body: bytes = b'{"session_id": "s1"}') -> httpx.Response:
    return httpx.Response(200, content=body, headers={"content-type": "application/json"})


async def test_headers_and_json_body() -> None:
    rec = Recorder(ok())
    t = make(rec)
    resp = await t.request_json(
        CreateSessionResponse, PoolKind.SESSION, "POST", "/api/v1/create_session", json={"tags": ["a"]}
    )
    assert resp.session_id == "s1"
    (req,) = rec.requests
    assert str(req.url) == "http://sim.test/api/v1/create_session"
    assert req.headers["x-api-key"] == KEY
    assert req.headers["user-agent"] == USER_AGENT
    assert req.headers["accept"] == "application/json"
    assert req.headers["content-type"] == "application/json"
    assert req.headers["x-idempotency-key"].startswith("tinkex-trio-")
    assert req.content == b'{"tags":["a"]}'
    await t.aclose()


async def test_get_has_no_idempotency_key_or_content_type() -> None:
    rec = Recorder(ok(b"{}"))
    t = make(rec)
    await t.request(PoolKind.TRAINING, "GET", "/api/v1/healthz", params={"limit": 3})
    (req,) = rec.requests
    assert "x-idempotency-key" not in req.headers
    assert "content-type" not in req.headers
    assert req.url.params["limit"] == "3"
    await t.aclose()


async def test_one_client_per_pool() -> None:
    rec = Recorder(ok(b"{}"))
    t = make(rec)
    for pool in (PoolKind.TRAINING, PoolKind.SAMPLING, PoolKind.TRAINING, PoolKind.FUTURES):
        await t.request(pool, "GET", "/x")
    assert rec.pools == [PoolKind.TRAINING, PoolKind.SAMPLING, PoolKind.FUTURES]
    await t.aclose()
    with pytest.raises(errors.APIConnectionError):
        await t.request(PoolKind.SESSION, "GET", "/x")


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503])
async def test_retryable_statuses_retry_with_the_same_idempotency_key(status: int, autojump_clock: object) -> None:
    rec = Recorder(httpx.Response(status, json={"detail": "busy"}), httpx.Response(status), ok())
    t = make(rec)
    events: list[TelemetryEvent] = []
    t.telemetry.attach("t", RETRY, events.append)
    await t.request(PoolKind.TRAINING, "POST", "/api/v1/optim_step", json={})
    assert len(rec.requests) == 3
    keys = {r.headers["x-idempotency-key"] for r in rec.requests}
    assert len(keys) == 1
    assert [e.metadata["reason"] for e in events] == ["retryable_status", "retryable_status"]
    # backoff grows: first gap within [0.375, 0.5], second within [0.75, 1.0]
    gap1, gap2 = rec.times[1] - rec.times[0], rec.times[2] - rec.times[1]
    assert 0.375 <= gap1 <= 0.5
    assert 0.75 <= gap2 <= 1.0
    await t.aclose()


async def test_each_logical_request_has_its_own_key() -> None:
    rec = Recorder(ok())
    t = make(rec)
    await t.request(PoolKind.TRAINING, "POST", "/a", json={})
    await t.request(PoolKind.TRAINING, "POST", "/a", json={})
    assert rec.requests[0].headers["x-idempotency-key"] != rec.requests[1].headers["x-idempotency-key"]
    await t.aclose()


@pytest.mark.parametrize(
    ("headers", "expected"),
    [({"retry-after": "7"}, 7.0), ({"retry-after-ms": "2500"}, 2.5), ({"retry-after": "61"}, None)],
)
async def test_retry_after_honoured(headers: dict[str, str], expected: float | None, autojump_clock: object) -> None:
    rec = Recorder(httpx.Response(429, headers=headers), ok())
    t = make(rec)
    await t.request(PoolKind.TRAINING, "POST", "/a", json={})
    gap = rec.times[1] - rec.times[0]
    if expected is None:  # out of range: ignored, the backoff formula applies
        assert 0.375 <= gap <= 0.5
    else:
        assert gap == pytest.approx(expected)
    await t.aclose()


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, errors.BadRequestError),
        (401, errors.AuthenticationError),
        (403, errors.PermissionDeniedError),
        (404, errors.NotFoundError),
        (422, errors.UnprocessableEntityError),
    ],
)
async def test_non_retryable_statuses_raise_at_once(status: int, cls: type[errors.APIStatusError]) -> None:
    rec = Recorder(httpx.Response(status, json={"detail": f"no: {KEY}"}, headers={"x-request-id": "rq-9"}))
    t = make(rec)
    with pytest.raises(cls) as info:
        await t.request(PoolKind.TRAINING, "POST", "/a", json={})
    assert len(rec.requests) == 1
    err = info.value
    assert err.status_code == status
    assert err.request_id == "rq-9"
    assert KEY not in str(err) and KEY not in repr(err) and KEY not in repr(err.body)
    assert isinstance(err.body, dict)
    await t.aclose()


async def test_x_should_retry_overrides_status(autojump_clock: object) -> None:
    rec = Recorder(httpx.Response(500, headers={"x-should-retry": "false"}))
    t = make(rec)
    with pytest.raises(errors.InternalServerError):
        await t.request(PoolKind.TRAINING, "POST", "/a", json={})
    assert len(rec.requests) == 1
    rec2 = Recorder(httpx.Response(400, content=b"x", headers={"x-should-retry": "true"}), ok())
    t2 = make(rec2)
    await t2.request(PoolKind.TRAINING, "POST", "/a", json={})
    assert len(rec2.requests) == 2
    await t.aclose()
    await t2.aclose()


async def test_connection_errors_retry_then_raise(autojump_clock: object) -> None:
    rec = Recorder(httpx.ConnectError("refused"))
    t = make(rec, retry={"max_retries": 3})
    stops: list[TelemetryEvent] = []
    t.telemetry.attach("t", [HTTP_REQUEST_EXCEPTION, HTTP_REQUEST_STOP], stops.append)
    with pytest.raises(errors.APIConnectionError) as info:
        await t.request(PoolKind.TRAINING, "POST", "/a", json={})
    assert not isinstance(info.value, errors.APITimeoutError)
    assert len(rec.requests) == 4
    assert [e.name for e in stops] == [HTTP_REQUEST_EXCEPTION] * 4
    await t.aclose()


async def test_timeouts_become_api_timeout_error() -> None:
    rec = Recorder(httpx.ReadTimeout("slow"))
    t = make(rec)
    with pytest.raises(errors.APITimeoutError):
        await t.request(PoolKind.FUTURES, "POST", "/a", json={}, retry=False)
    assert len(rec.requests) == 1
    await t.aclose()


async def test_empty_400_is_a_retryable_connection_error(autojump_clock: object) -> None:
    rec = Recorder(httpx.Response(400), ok())
    t = make(rec)
    await t.request(PoolKind.TRAINING, "POST", "/a", json={})
    assert len(rec.requests) == 2
    await t.aclose()


async def test_retry_false_sends_once(autojump_clock: object) -> None:
    rec = Recorder(httpx.Response(503))
    t = make(rec)
    with pytest.raises(errors.InternalServerError):
        await t.request(PoolKind.SAMPLING, "POST", "/a", json={}, retry=False)
    assert len(rec.requests) == 1
    await t.aclose()


async def test_cancellation_is_not_retried(autojump_clock: object) -> None:
    calls = 0

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        await trio.sleep(100)
        return ok()

    config = Config.create(api_key=KEY, base_url="http://sim.test", env={})
    t = Transport(config, transport_factory=lambda pool: httpx.MockTransport(slow))
    with trio.move_on_after(1) as scope:
        await t.request(PoolKind.TRAINING, "POST", "/a", json={})
    assert scope.cancelled_caught
    assert calls == 1
    await t.aclose()


async def test_budget_limits_retries(autojump_clock: object) -> None:
    rec = Recorder(httpx.Response(503, headers={"retry-after": "20"}))
    t = make(rec, retry={"retry_budget_s": 50.0})
    start = trio.current_time()
    with pytest.raises(errors.InternalServerError):
        await t.request(PoolKind.TRAINING, "POST", "/a", json={})
    assert len(rec.requests) == 3  # t=0, 20, 40; the next would end past 50 s
    assert trio.current_time() - start == pytest.approx(40.0)
    await t.aclose()


async def test_repr_hides_the_key() -> None:
    t = make(Recorder(ok()))
    assert KEY not in repr(t)
    await t.aclose()


async def test_the_key_is_not_sent_to_another_origin_on_redirect() -> None:
    # Review fix: httpx drops only Authorization on a cross-origin redirect; X-API-Key must not follow it either.
    rec = Recorder(
        httpx.Response(307, headers={"location": "http://sim.test/api/v1/moved"}),
        httpx.Response(307, headers={"location": "http://elsewhere.test/collect"}),
        ok(),
    )
    t = make(rec)
    resp = await t.request_json(CreateSessionResponse, PoolKind.SESSION, "POST", "/api/v1/create_session", json={})
    assert resp.session_id == "s1"
    first, same_origin, other_origin = rec.requests
    assert first.headers["x-api-key"] == KEY
    assert same_origin.url.host == "sim.test" and same_origin.headers["x-api-key"] == KEY
    assert other_origin.url.host == "elsewhere.test"
    assert "x-api-key" not in other_origin.headers
    assert KEY not in str(other_origin.headers)


def test_which_redirect_targets_may_carry_the_key() -> None:
    from tinkex_trio._pool_set import _may_carry_key  # pyright: ignore[reportPrivateUsage]

    base = httpx.URL("http://sim.test/api")
    assert _may_carry_key(base, httpx.URL("http://sim.test:80/x"))
    assert _may_carry_key(base, httpx.URL("https://sim.test/x"))  # httpx's https upgrade
    assert not _may_carry_key(base, httpx.URL("http://sim.test:8080/x"))
    assert not _may_carry_key(base, httpx.URL("http://sim.test.evil/x"))
    tls = httpx.URL("https://sim.test:8443")
    assert _may_carry_key(tls, httpx.URL("https://sim.test:8443/y"))
    assert not _may_carry_key(tls, httpx.URL("http://sim.test:8443/y"))  # never downgraded to plain http


async def test_aclose_is_bounded_in_time(autojump_clock: trio.testing.MockClock) -> None:
    # Review fix: closing runs shielded from cancellation, so it needs its own deadline (a peer that never lets a
    # connection close must not hang the end of the session).
    class StuckTransport(httpx.MockTransport):
        async def aclose(self) -> None:
            await trio.sleep(3600)

    rec = Recorder(ok())
    config = Config.create(api_key=KEY, base_url="http://sim.test/", env={})
    t = Transport(config, transport_factory=lambda pool: StuckTransport(rec.handler))
    await t.request(PoolKind.SESSION, "GET", "/api/v1/healthz")
    await t.request(PoolKind.TRAINING, "GET", "/api/v1/healthz")
    started = trio.current_time()
    with trio.CancelScope() as scope:
        scope.cancel()  # even a cancelled caller closes the pools (shielded), but not forever
        await t.aclose()
    assert trio.current_time() - started <= 10.0
    with pytest.raises(errors.APIConnectionError, match="closed"):
        await t.request(PoolKind.SESSION, "GET", "/api/v1/healthz")


async def test_an_echoed_key_does_not_reach_a_validation_error() -> None:
    # Review fix: a wrong base_url that answers 200 by echoing the request (an echo service, a debugging proxy) must
    # not put the key into the ResponseValidationError raised for the body.
    echo = f'{{"headers": {{"X-Api-Key": "{KEY}"}}, "url": "http://sim.test/?k={KEY}"}}'.encode()
    t = make(Recorder(ok(echo)))
    with pytest.raises(errors.ResponseValidationError) as info:
        await t.request_json(CreateSessionResponse, PoolKind.SESSION, "POST", "/api/v1/create_session", json={})
    assert info.value.body is not None
    assert KEY.encode() not in info.value.body
    assert b"<redacted>" in info.value.body
    assert KEY not in repr(info.value) and KEY not in str(info.value)


@pytest.mark.parametrize("key", ["tml-abc+def/ghi=", "tml-k~e!y*9:x", "tml-a%2Bb"])
async def test_a_key_with_any_printable_characters_is_redacted_whole(key: str) -> None:
    # Review fix: Config accepts any printable key after 'tml-'; redaction used to stop at the first character
    # outside [A-Za-z0-9_.-] and leave the rest of the key in the message.
    body = f'{{"detail": "unknown key {key}", "seen": ["{key}"]}}'.encode()
    rec = Recorder(httpx.Response(401, content=body, headers={"content-type": "application/json"}))
    config = Config.create(api_key=key, base_url="http://sim.test/", env={})
    t = Transport(config, transport_factory=rec.factory)
    with pytest.raises(errors.AuthenticationError) as info:
        await t.request(PoolKind.SESSION, "POST", "/api/v1/create_session", json={})
    secret = key.removeprefix("tml-")
    for text in (str(info.value), repr(info.value), repr(info.value.body)):
        assert secret not in text
    assert "<redacted>" in str(info.value)
    assert errors.redact(f"?key={key}&x=1") == "?key=<redacted>&x=1"


async def test_a_cancelled_request_still_ends_its_telemetry_span(autojump_clock: trio.testing.MockClock) -> None:
    # Review fix: every tinkex.http.request.start is followed by a stop or an exception (the bus's span convention:
    # cancellation gives .stop with cancelled=True), so a listener counting requests in flight never leaks one.
    async def slow(request: httpx.Request) -> httpx.Response:
        await trio.sleep(100)
        return ok()

    config = Config.create(api_key=KEY, base_url="http://sim.test/", env={})
    t = Transport(config, transport_factory=lambda pool: httpx.MockTransport(slow))
    events: list[TelemetryEvent] = []
    t.telemetry.attach("t", [HTTP_REQUEST_START, HTTP_REQUEST_EXCEPTION, HTTP_REQUEST_STOP], events.append)
    with trio.move_on_after(1.0):
        await t.request(PoolKind.SESSION, "POST", "/api/v1/create_session", json={})
    assert [e.name for e in events] == [HTTP_REQUEST_START, HTTP_REQUEST_STOP]
    stop = events[1]
    assert stop.metadata["cancelled"] is True and "status" not in stop.metadata
    assert stop.measurements["duration_ms"] == pytest.approx(1000.0)
    await t.aclose()
