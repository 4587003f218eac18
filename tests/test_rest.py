"""RestClient against the simulator, in process (httpx's ASGI transport)."""

from __future__ import annotations

import gc
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, TypeVar

import httpx
import pytest
import trio
import trio.testing

from tinkex_trio import types as t
from tinkex_trio._config import Config
from tinkex_trio._pool_set import PoolKind
from tinkex_trio._rest import RestClient, _Pages  # pyright: ignore[reportPrivateUsage]
from tinkex_trio._session import open_session
from tinkex_trio._transport import Transport
from tinkex_trio.errors import (
    BadRequestError,
    InternalServerError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    NotFoundError,
    UnprocessableEntityError,
)
from tinkex_trio.sim import EndpointFaults, FaultConfig, FaultMiddleware
from tinkex_trio.sim._app import SimApp, create_app
from tinkex_trio.sim._config import ServiceTime, SimConfig

T = TypeVar("T")

BASE_MODEL = "Qwen/Qwen3-8B"


class World:
    """One simulator, a Transport onto it (through the fault middleware) and a RestClient; helpers that make state."""

    def __init__(self, app: SimApp, faults: FaultConfig) -> None:
        self.app = app
        self.faults = faults
        self.pools: list[PoolKind] = []
        self.requests: list[httpx.Request] = []
        asgi = FaultMiddleware(app, lambda: self.faults)

        async def record(request: httpx.Request) -> None:
            self.requests.append(request)

        def factory(pool: PoolKind) -> httpx.AsyncBaseTransport:
            self.pools.append(pool)
            return _Recording(httpx.ASGITransport(app=asgi), record)

        self.transport = Transport(
            Config(api_key="tml-rest-test-key", base_url="http://sim"), transport_factory=factory
        )
        self.rest = RestClient(self.transport)
        self._model_seq: dict[str, int] = {}
        self._sampler_seq: dict[str, int] = {}

    async def post(self, type_: type[T], path: str, body: object) -> T:
        return await self.transport.request_json(type_, PoolKind.SESSION, "POST", f"/api/v1/{path}", json=body)

    async def result(self, future: t.UntypedAPIFuture, type_: type[T]) -> T:
        for _ in range(50):
            response = await self.transport.request(
                PoolKind.FUTURES,
                "POST",
                "/api/v1/retrieve_future",
                json=t.FutureRetrieveRequest(request_id=future.request_id, allow_metadata_only=False),
            )
            reply = t.parse_future_reply(response.content, type_)
            if not isinstance(reply, t.TryAgainResponse):
                assert isinstance(reply, type_), reply
                return reply
        raise AssertionError("future never finished")

    async def new_session(self, **metadata: str) -> str:
        reply = await self.post(
            t.CreateSessionResponse,
            "create_session",
            t.CreateSessionRequest(sdk_version="test", user_metadata=dict(metadata)),
        )
        self._model_seq[reply.session_id] = 0
        self._sampler_seq[reply.session_id] = 0
        return reply.session_id

    async def new_model(self, session_id: str, rank: int = 4) -> str:
        seq = self._model_seq[session_id]
        self._model_seq[session_id] = seq + 1
        future = await self.post(
            t.UntypedAPIFuture,
            "create_model",
            t.CreateModelRequest(
                session_id=session_id,
                model_seq_id=seq,
                base_model=BASE_MODEL,
                lora_config=t.LoraConfig(rank=rank, seed=1),
            ),
        )
        return (await self.result(future, t.CreateModelResponse)).model_id

    async def save(self, model_id: str, name: str, *, sampler: bool = False, ttl_seconds: int | None = None) -> str:
        request: object
        if sampler:
            request = t.SaveWeightsForSamplerRequest(model_id=model_id, path=name, ttl_seconds=ttl_seconds)
            future = await self.post(t.UntypedAPIFuture, "save_weights_for_sampler", request)
            reply = await self.result(future, t.SaveWeightsForSamplerResponse)
            assert reply.path is not None
            return reply.path
        request = t.SaveWeightsRequest(model_id=model_id, path=name, ttl_seconds=ttl_seconds)
        future = await self.post(t.UntypedAPIFuture, "save_weights", request)
        return (await self.result(future, t.SaveWeightsResponse)).path

    async def new_sampler(self, session_id: str, *, model_path: str | None = None) -> str:
        seq = self._sampler_seq[session_id]
        self._sampler_seq[session_id] = seq + 1
        reply = await self.post(
            t.CreateSamplingSessionResponse,
            "create_sampling_session",
            t.CreateSamplingSessionRequest(
                session_id=session_id,
                sampling_session_seq_id=seq,
                base_model=None if model_path else BASE_MODEL,
                model_path=model_path,
            ),
        )
        return reply.sampling_session_id

    def count(self, endpoint: str) -> int:
        return self.app.request_counts[endpoint]


class _Recording(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport, record: Any) -> None:
        self._inner = inner
        self._record = record

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await self._record(request)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


@pytest.fixture
async def world() -> AsyncGenerator[World]:
    app = create_app(SimConfig(seed=3, compute_in_threads=False, service=ServiceTime(base_s=0.001)))
    async with app.running():
        w = World(app, FaultConfig(seed=5))
        try:
            yield w
        finally:
            await w.transport.aclose()


async def collect(iterator: AsyncIterator[T]) -> list[T]:
    return [item async for item in iterator]


# -- training runs -------------------------------------------------------------------------------------------------


async def test_list_training_runs_one_page_with_cursor(world: World) -> None:
    session = await world.new_session()
    models = [await world.new_model(session) for _ in range(3)]

    first = await world.rest.list_training_runs(limit=2)
    assert [r.training_run_id for r in first.training_runs] == models[:2]
    assert (first.cursor.offset, first.cursor.limit, first.cursor.total_count) == (0, 2, 3)
    rest = await world.rest.list_training_runs(limit=2, offset=2)
    assert [r.training_run_id for r in rest.training_runs] == models[2:]
    assert rest.training_runs[0].base_model == BASE_MODEL
    assert rest.training_runs[0].lora_rank == 4

    sent = [r for r in world.requests if r.url.path == "/api/v1/training_runs"]
    assert dict(sent[0].url.params) == {"limit": "2", "offset": "0", "access_scope": "owned"}
    assert sent[0].headers["x-sdk-method"] == "RestClient.list_training_runs"


async def test_iter_training_runs_walks_every_page(world: World) -> None:
    sessions = [await world.new_session(), await world.new_session()]
    models = [await world.new_model(sessions[i % 2]) for i in range(7)]

    runs = await collect(world.rest.iter_training_runs(page_size=3))

    assert sorted(r.training_run_id for r in runs) == sorted(models)
    assert len(runs) == 7
    sent = [r.url.params for r in world.requests if r.url.path == "/api/v1/training_runs"]
    assert [(p["limit"], p["offset"]) for p in sent] == [("3", "0"), ("3", "3"), ("3", "6")]


async def test_iter_training_runs_stops_at_total_count_on_a_page_boundary(world: World) -> None:
    session = await world.new_session()
    for _ in range(6):
        await world.new_model(session)

    runs = await collect(world.rest.iter_training_runs(page_size=3, access_scope="accessible"))

    assert len(runs) == 6
    assert world.count("training_runs") == 2  # no third request for an empty page
    sent = [r.url.params for r in world.requests if r.url.path == "/api/v1/training_runs"]
    assert all(p["access_scope"] == "accessible" for p in sent)


async def test_iter_training_runs_of_nothing(world: World) -> None:
    assert await collect(world.rest.iter_training_runs(page_size=5)) == []
    assert world.count("training_runs") == 1


async def test_iterators_check_page_size_when_called(world: World) -> None:
    with pytest.raises(ValueError, match="limit must be an int >= 1"):
        world.rest.iter_training_runs(page_size=0)
    with pytest.raises(ValueError, match="limit"):
        world.rest.iter_user_checkpoints(page_size=-1)
    with pytest.raises(ValueError, match="limit"):
        world.rest.iter_sessions(page_size=0)
    with pytest.raises(ValueError, match="offset must be an int >= 0"):
        await world.rest.list_training_runs(offset=-1)
    assert world.requests == []


async def test_get_training_run_directly_and_by_tinker_path(world: World) -> None:
    session = await world.new_session()
    model_id = await world.new_model(session, rank=8)
    path = await world.save(model_id, "ckpt-1")

    run = await world.rest.get_training_run(model_id)
    assert run.training_run_id == model_id
    assert run.lora_rank == 8
    assert run.last_checkpoint is not None
    assert run.last_checkpoint.tinker_path == path

    by_path = await world.rest.get_training_run_by_tinker_path(path)
    assert (by_path.training_run_id, by_path.lora_rank) == (model_id, 8)

    with pytest.raises(NotFoundError) as info:
        await world.rest.get_training_run(f"{session}:train:99")
    assert info.value.status_code == 404


# -- checkpoints ---------------------------------------------------------------------------------------------------


async def test_list_checkpoints_of_a_run(world: World) -> None:
    session = await world.new_session()
    model_id = await world.new_model(session)
    paths = {
        await world.save(model_id, "a"),
        await world.save(model_id, "b"),
        await world.save(model_id, "s", sampler=True),
    }

    listing = await world.rest.list_checkpoints(model_id)

    assert {c.tinker_path for c in listing.checkpoints} == paths
    by_id = {c.checkpoint_id: c for c in listing.checkpoints}
    assert by_id["weights/a"].checkpoint_type == "training"
    assert by_id["sampler_weights/s"].checkpoint_type == "sampler"
    assert all(c.size_bytes and c.size_bytes > 0 for c in listing.checkpoints)


async def test_user_checkpoints_page_and_iterate(world: World) -> None:
    session = await world.new_session()
    models = [await world.new_model(session) for _ in range(2)]
    paths = [await world.save(m, f"c{i}") for m in models for i in range(3)]  # 6 checkpoints

    page = await world.rest.list_user_checkpoints(limit=4, offset=0)
    assert len(page.checkpoints) == 4
    assert page.cursor is not None
    assert page.cursor.total_count == 6

    walked = await collect(world.rest.iter_user_checkpoints(page_size=4))
    assert sorted(c.tinker_path for c in walked) == sorted(paths)
    sent = [r.url.params for r in world.requests if r.url.path == "/api/v1/checkpoints"]
    assert [(p["limit"], p["offset"]) for p in sent[1:]] == [("4", "0"), ("4", "4")]


async def test_publish_unpublish_by_id_and_by_path(world: World) -> None:
    session = await world.new_session()
    model_id = await world.new_model(session)
    path = await world.save(model_id, "pub")

    async def public() -> bool:
        (checkpoint,) = (await world.rest.list_checkpoints(model_id)).checkpoints
        return checkpoint.public

    assert not await public()
    await world.rest.publish_checkpoint(model_id, "weights/pub")
    assert await public()
    await world.rest.unpublish_checkpoint(model_id, "weights/pub")
    assert not await public()
    await world.rest.publish_checkpoint_from_tinker_path(path)
    assert await public()
    await world.rest.unpublish_checkpoint_from_tinker_path(t.TinkerPath.parse(path))
    assert not await public()

    methods = [r.method for r in world.requests if r.url.path.endswith("/publish")]
    assert methods == ["POST", "DELETE", "POST", "DELETE"]
    assert all("x-idempotency-key" in r.headers for r in world.requests if r.url.path.endswith("/publish"))


async def test_checkpoint_ttl_set_and_cleared(world: World) -> None:
    session = await world.new_session()
    model_id = await world.new_model(session)
    path = await world.save(model_id, "ttl")

    async def expires() -> Any:
        (checkpoint,) = (await world.rest.list_checkpoints(model_id)).checkpoints
        return checkpoint.expires_at, checkpoint.time

    await world.rest.set_checkpoint_ttl(model_id, "weights/ttl", 7200)
    expires_at, saved = await expires()
    assert expires_at is not None
    assert (expires_at - saved).total_seconds() == 7200

    await world.rest.set_checkpoint_ttl_from_tinker_path(path, None)
    assert (await expires())[0] is None
    bodies = [r.content for r in world.requests if r.url.path.endswith("/ttl")]
    assert bodies == [b'{"ttl_seconds":7200}', b'{"ttl_seconds":null}']

    with pytest.raises(UnprocessableEntityError):
        await world.rest.set_checkpoint_ttl(model_id, "weights/ttl", -5)


async def test_delete_checkpoint_by_id_and_by_path(world: World) -> None:
    session = await world.new_session()
    model_id = await world.new_model(session)
    await world.save(model_id, "one")
    two = await world.save(model_id, "two", sampler=True)

    await world.rest.delete_checkpoint(model_id, "weights/one")
    assert [c.checkpoint_id for c in (await world.rest.list_checkpoints(model_id)).checkpoints] == [
        "sampler_weights/two"
    ]
    await world.rest.delete_checkpoint_from_tinker_path(two)
    assert (await world.rest.list_checkpoints(model_id)).checkpoints == []

    with pytest.raises(NotFoundError):
        await world.rest.delete_checkpoint(model_id, "weights/one")


async def test_checkpoint_names_are_escaped_in_paths(world: World) -> None:
    session = await world.new_session()
    model_id = await world.new_model(session)
    path = await world.save(model_id, "step 10?final#1%")

    await world.rest.publish_checkpoint_from_tinker_path(path)
    (checkpoint,) = (await world.rest.list_checkpoints(model_id)).checkpoints
    assert checkpoint.public
    await world.rest.delete_checkpoint(model_id, "weights/step 10?final#1%")
    assert (await world.rest.list_checkpoints(model_id)).checkpoints == []
    raw = [
        r.url.raw_path for r in world.requests if r.method in ("POST", "DELETE") and b"/checkpoints/" in r.url.raw_path
    ]
    assert raw[0].endswith(b"/checkpoints/weights/step%2010%3Ffinal%231%25/publish")


async def test_bad_checkpoint_references_fail_before_sending(world: World) -> None:
    with pytest.raises(ValueError, match="not a checkpoint"):
        await world.rest.delete_checkpoint("run", "ckpt-1")
    with pytest.raises(ValueError, match="not a checkpoint"):
        await world.rest.publish_checkpoint("run", "weights/a/b")
    with pytest.raises(ValueError, match="not a tinker path"):
        await world.rest.delete_checkpoint_from_tinker_path("s3://bucket/weights/x")
    with pytest.raises(ValueError, match="external weights"):
        await world.rest.get_external_weights_urls("tinker://run/weights/x")
    with pytest.raises(ValueError, match="non-empty"):
        await world.rest.get_training_run("")
    with pytest.raises(TypeError, match="ttl_seconds"):
        await world.rest.set_checkpoint_ttl("run", "weights/x", 1.5)  # pyright: ignore[reportArgumentType]
    assert world.requests == []


async def test_external_weights_urls(world: World) -> None:
    session = await world.new_session()
    model_id = await world.new_model(session)
    future = await world.post(
        t.UntypedAPIFuture, "save_weights_external", t.SaveWeightsExternalRequest(model_id=model_id, path="ext")
    )
    path = (await world.result(future, t.SaveWeightsExternalResponse)).path
    assert path == f"tinker://{model_id}/external_weights/ext"

    urls = await world.rest.get_external_weights_urls(path)

    assert urls.urls
    assert all(url.startswith("https://") for url in urls.urls.values())
    (request,) = [r for r in world.requests if r.url.path.endswith("/external_weights_urls")]
    assert request.method == "GET"
    assert (
        request.url.path == f"/api/v1/training_runs/{model_id}/checkpoints/external_weights/ext/external_weights_urls"
    )
    with pytest.raises(NotFoundError):
        await world.rest.get_external_weights_urls(f"tinker://{model_id}/external_weights/missing")


async def test_weights_info(world: World) -> None:
    session = await world.new_session()
    model_id = await world.new_model(session, rank=16)
    path = await world.save(model_id, "w")

    info = await world.rest.get_weights_info(path)

    assert info.base_model == BASE_MODEL
    assert info.is_lora
    assert info.lora_rank == 16
    (request,) = [r for r in world.requests if r.url.path == "/api/v1/weights_info"]
    assert request.content == b'{"tinker_path":"' + path.encode() + b'"}'
    with pytest.raises(NotFoundError):
        await world.rest.get_weights_info(f"tinker://{model_id}/weights/missing")


# -- sessions and samplers -----------------------------------------------------------------------------------------


async def test_sessions_list_iterate_and_get(world: World) -> None:
    sessions = [await world.new_session(owner=f"u{i}") for i in range(5)]
    model_id = await world.new_model(sessions[1])

    page = await world.rest.list_sessions(limit=2, offset=1)
    assert page.sessions == sessions[1:3]

    assert await collect(world.rest.iter_sessions(page_size=2)) == sessions
    # Pages of 2, 2, 1: the short page ends the walk (the listing has no cursor).
    assert world.count("sessions") == 4

    info = await world.rest.get_session(sessions[1])
    assert info.training_run_ids == [model_id]
    assert info.user_metadata == {"owner": "u1"}
    with pytest.raises(NotFoundError):
        await world.rest.get_session("sess-missing")


async def test_iter_sessions_full_last_page_needs_one_more_request(world: World) -> None:
    sessions = [await world.new_session() for _ in range(4)]
    assert await collect(world.rest.iter_sessions(page_size=2)) == sessions
    assert world.count("sessions") == 3  # 2, 2, then an empty page


async def test_assign_session_project_moves_the_session(world: World) -> None:
    moved, stays = await world.new_session(), await world.new_session()

    await world.rest.assign_session_project(moved, "proj-a")

    in_project = await world.rest.search_sessions(t.SessionSearchRequest(project_ids=["proj-a"]))
    assert [s.session_id for s in in_project.sessions] == [moved]
    await world.rest.assign_session_project(moved, "proj-b")  # from one project to another
    assert world.app.state.sessions[moved].project_id == "proj-b"
    assert world.app.state.sessions[stays].project_id is None
    sent = [r for r in world.requests if r.url.path.endswith("/project")]
    assert [(r.method, r.url.path, r.content) for r in sent] == [
        ("PUT", f"/api/v1/sessions/{moved}/project", b'{"project_id":"proj-a"}'),
        ("PUT", f"/api/v1/sessions/{moved}/project", b'{"project_id":"proj-b"}'),
    ]
    assert sent[0].headers["x-sdk-method"] == "RestClient.assign_session_project"


async def test_assign_session_project_errors(world: World) -> None:
    session = await world.new_session()
    with pytest.raises(NotFoundError):
        await world.rest.assign_session_project("sess-missing", "proj-a")
    # The server's own checks, as the official SDK documents them: 400 without a project id (also for null or "").
    for body in ({}, {"project_id": None}, {"project_id": ""}):
        with pytest.raises(BadRequestError, match="project_id"):
            await world.transport.request(PoolKind.TRAINING, "PUT", f"/api/v1/sessions/{session}/project", json=body)
    assert world.app.state.sessions[session].project_id is None
    before = len(world.requests)
    with pytest.raises(InvalidArgumentError) as info:
        await world.rest.assign_session_project(session, "")
    assert info.value.argument == "project_id"
    with pytest.raises(InvalidArgumentError) as info:
        await world.rest.assign_session_project("", "proj-a")
    assert info.value.argument == "session_id"
    with pytest.raises(InvalidArgumentTypeError):
        await world.rest.assign_session_project(session, 7)  # pyright: ignore[reportArgumentType]
    assert len(world.requests) == before  # refused before anything was sent


async def test_get_sampler(world: World) -> None:
    session = await world.new_session()
    model_id = await world.new_model(session)
    path = await world.save(model_id, "for-sampling", sampler=True)
    base = await world.new_sampler(session)
    from_path = await world.new_sampler(session, model_path=path)

    got = await world.rest.get_sampler(base)
    assert (got.sampler_id, got.base_model, got.model_path) == (base, BASE_MODEL, None)
    got = await world.rest.get_sampler(from_path)
    assert (got.sampler_id, got.model_path) == (from_path, path)
    with pytest.raises(NotFoundError):
        await world.rest.get_sampler(f"{session}:sample:42")


# -- transport behaviour -------------------------------------------------------------------------------------------


async def test_every_call_uses_the_training_pool(world: World) -> None:
    fresh = World(world.app, world.faults)  # a transport that has opened no pool yet
    try:
        await fresh.rest.list_training_runs()
        await fresh.rest.list_user_checkpoints()
        await fresh.rest.list_sessions()
        with pytest.raises(NotFoundError):
            await fresh.rest.get_weights_info("tinker://nobody/weights/x")
        assert fresh.pools == [PoolKind.TRAINING]
        assert "http://sim" in repr(fresh.rest)
        assert "tml-" not in repr(fresh.rest)
    finally:
        await fresh.transport.aclose()


async def test_server_errors_are_retried(world: World, autojump_clock: trio.testing.MockClock) -> None:
    # (pytest-trio runs a test on a fixture's clock only when the test itself takes that fixture.)
    session = await world.new_session()
    await world.new_model(session)
    world.faults = FaultConfig(seed=11, endpoints={"training_runs": EndpointFaults(error_rates={503: 0.5})})

    for _ in range(5):
        page = await world.rest.list_training_runs()
        assert len(page.training_runs) == 1
    attempts = world.count("training_runs")
    sent = len([r for r in world.requests if r.url.path == "/api/v1/training_runs"])
    assert sent > 5  # some attempts were answered 503 by the fault layer and retried
    assert attempts == 5  # the app itself answered each call once

    world.faults = FaultConfig(seed=11, endpoints={"training_runs": EndpointFaults(error_rates={500: 1.0})})
    with pytest.raises(InternalServerError):
        await world.rest.list_training_runs()


async def test_session_rest_sees_what_a_training_client_made(world: World) -> None:
    async with open_session(
        "tml-rest-test-key", "http://sim", transport_factory=lambda pool: httpx.ASGITransport(app=world.app)
    ) as session:
        trainer = await session.create_lora_training_client(BASE_MODEL, rank=4, seed=2)
        state_path = await trainer.save_state("from-session")
        sampler_path = await trainer.save_weights_for_sampler("from-session-sampler")

        rest = session.rest
        assert rest is session.rest
        run = await rest.get_training_run(trainer.model_id)
        assert run.last_checkpoint is not None
        assert run.last_checkpoint.tinker_path == state_path
        listing = await rest.list_checkpoints(trainer.model_id)
        assert sorted(c.tinker_path for c in listing.checkpoints) == sorted([state_path, sampler_path])
        info = await rest.get_weights_info(state_path)
        assert (info.base_model, info.lora_rank) == (BASE_MODEL, 4)
        got = await rest.get_session(session.session_id)
        assert got.training_run_ids == [trainer.model_id]
        assert session.session_id in await collect(rest.iter_sessions(page_size=1))


async def test_leaving_an_iteration_early_leaves_nothing_behind(world: World) -> None:
    session = await world.new_session()
    for _ in range(3):
        await world.new_model(session)

    async for run in world.rest.iter_training_runs(page_size=2):
        assert run.training_run_id.startswith(session)
        break
    async for _ in world.rest.iter_sessions(page_size=1):
        break
    # An abandoned async generator would be finalized by trio with a ResourceWarning (an error in this suite).
    gc.collect()
    await trio.lowlevel.checkpoint()
    assert world.count("training_runs") == 1


async def test_pages_refetch_after_a_cancelled_fetch_and_refuse_two_readers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    offsets: list[int] = []
    gate = trio.Event()

    async def fetch(offset: int) -> tuple[list[int], bool]:
        offsets.append(offset)
        await gate.wait()
        return list(range(offset, min(offset + 2, 5))), offset + 2 >= 5

    pages = _Pages(fetch)
    with trio.move_on_after(0.01):
        await pages.__anext__()  # cancelled while its page is in flight
    assert offsets == [0]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pages.__anext__)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(RuntimeError, match="already being iterated"):
            await pages.__anext__()
        gate.set()
    assert [item async for item in pages] == [1, 2, 3, 4]  # item 0 went to the task above
    assert offsets == [0, 0, 2, 4]
