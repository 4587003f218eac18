"""The blocking facade (``tinkex_trio.blocking``) against the simulator served by hypercorn on 127.0.0.1, in a trio
thread of its own: from the main thread, from 32 threads at once, from a thread running an asyncio loop, and from a
subprocess receiving SIGINT. Plain (non-trio) tests: the facade is for programs that are not Trio programs."""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

import tinkex_trio as tx
from tinkex_trio import _blocking_gen, blocking
from tinkex_trio import types as t
from tinkex_trio._portal import Portal
from tinkex_trio.errors import (
    InvalidArgumentError,
    NotFoundError,
    RequestFailedError,
    SessionClosedError,
    TrainingHaltedError,
)
from tinkex_trio.sim import Latency, SimConfig, SimServer, sim_server_in_thread

API_KEY = "tml-blocking-test-key"
MODEL = "meta-llama/Llama-3.2-1B"


@pytest.fixture(scope="module")
def server() -> Iterator[SimServer]:
    """The simulator under hypercorn, in a trio thread of its own."""
    with sim_server_in_thread(SimConfig(seed=0)) as running:
        yield running
    assert not [thread for thread in threading.enumerate() if thread.name == "tinkex-sim-server"]


def _datum(tokens: list[int]) -> t.Datum:
    return t.Datum(
        model_input=t.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": tokens[1:], "weights": [1.0] * (len(tokens) - 1)},
    )


def _session_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "tinkex-trio-session"]


def _finished(server: SimServer, session_id: str) -> str | None:
    app: Any = server.app
    return app.state.sessions[session_id].finished


def test_train_and_sample_from_the_main_thread(server: SimServer) -> None:
    with blocking.open_session(API_KEY, server.base_url) as session:
        assert isinstance(session, blocking.Session) and session.session_id
        trainer = session.create_lora_training_client(MODEL, rank=4, seed=1)
        assert isinstance(trainer, blocking.TrainingClient)
        data = [_datum([1, 2, 3, 4, 5, 6])]
        first = trainer.forward_backward(data, "cross_entropy")
        assert isinstance(first, t.ForwardBackwardOutput)
        trainer.optim_step(t.AdamParams(learning_rate=0.05))
        future = trainer.submit_forward_backward(data, "cross_entropy")
        assert isinstance(future, blocking.Future)
        second = future.result(timeout=30)
        assert second.metrics["loss:sum"] < first.metrics["loss:sum"]  # the step applied
        sampler = trainer.save_weights_and_get_sampling_client("b1")
        assert isinstance(sampler, blocking.SamplingClient)
        result = sampler.sample(t.ModelInput.from_ints([1, 2, 3]), 2, t.SamplingParams(max_tokens=4, seed=3))
        assert len(result.sequences) == 2 and all(len(s.tokens) <= 4 for s in result.sequences)
        detach = session.on_queue_state_change(lambda state, reason: None)  # a plain method, run in the thread
        assert detach() is True
        runs = list(session.rest.iter_training_runs(page_size=1))
        assert any(run.training_run_id == trainer.get_info().model_id for run in runs)
        session_id = session.session_id
    assert session.closed and _finished(server, session_id) == "success"
    assert _session_threads() == []
    with pytest.raises(SessionClosedError):
        trainer.get_info()


def test_errors_are_the_same_types_in_the_calling_thread(server: SimServer) -> None:
    with blocking.open_session(API_KEY, server.base_url) as session:
        with pytest.raises(NotFoundError):
            session.rest.get_training_run("no-such-run")
        trainer = session.create_lora_training_client(MODEL, rank=4)
        with pytest.raises(RequestFailedError, match="unknown loss_fn"):
            trainer.forward_backward([_datum([1, 2, 3])], "no-such-loss")  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError):
            trainer.forward_backward([], "cross_entropy")
        assert trainer.get_info().model_id  # the session goes on after an error


def test_a_failed_custom_loss_halts_the_blocking_twin_until_resume(server: SimServer) -> None:
    def broken(data: list[t.Datum], logprobs: list[Any]) -> Any:
        raise ZeroDivisionError("bug in the loss")

    with blocking.open_session(API_KEY, server.base_url) as session:
        trainer = session.create_lora_training_client(MODEL, rank=4)
        with pytest.raises(ZeroDivisionError):
            trainer.forward_backward_custom([_datum([1, 2, 3])], broken)
        assert trainer.halted
        with pytest.raises(TrainingHaltedError) as halted:
            trainer.optim_step(t.AdamParams(learning_rate=0.01))
        assert isinstance(halted.value.__cause__, ZeroDivisionError)
        trainer.resume()
        assert not trainer.halted
        assert isinstance(trainer.optim_step(t.AdamParams(learning_rate=0.01)), t.OptimStepResponse)


def test_an_exception_in_the_block_finishes_errored_and_is_raised_as_itself(server: SimServer) -> None:
    with pytest.raises(ZeroDivisionError), blocking.open_session(API_KEY, server.base_url) as session:
        session_id = session.session_id
        1 / 0  # noqa: B018
    assert _finished(server, session_id) == "errored"
    app: Any = server.app
    assert "ZeroDivisionError" in (app.state.sessions[session_id].finish_detail or "")
    assert _session_threads() == []


def test_open_and_close_across_cells(server: SimServer) -> None:
    session = blocking.open_session(API_KEY, server.base_url)  # one notebook cell
    trainer = session.create_lora_training_client(MODEL, rank=4)  # another
    assert trainer.get_info().model_id
    session.close()  # the last
    session.close()  # idempotent
    assert _finished(server, session.session_id) == "success" and _session_threads() == []


def test_a_refused_session_raises_in_the_caller_and_leaves_no_thread(server: SimServer) -> None:
    with pytest.raises(tx.errors.ConfigError):
        blocking.open_session("not-a-tinker-key", server.base_url)
    assert _session_threads() == []


def test_32_threads_sample_at_once(server: SimServer) -> None:
    with blocking.open_session(API_KEY, server.base_url) as session:
        sampler = session.create_sampling_client(base_model=MODEL)

        def score(i: int) -> tuple[int, int]:
            result = sampler.sample(
                t.ModelInput.from_ints([1, 2, i % 7 + 3]), 1, t.SamplingParams(max_tokens=3, seed=i)
            )
            return i, len(result.sequences)

        with ThreadPoolExecutor(max_workers=32) as pool:
            results = list(pool.map(score, range(64)))
        assert results == [(i, 1) for i in range(64)]
        requests = session.metrics.counter_total("tinkex_requests_total")
        assert requests >= 64


def test_inside_a_running_asyncio_loop(server: SimServer) -> None:
    async def notebook_cell() -> str:
        # Jupyter's situation: an asyncio loop owns this thread. The blocking API blocks it, as any blocking call.
        with blocking.open_session(API_KEY, server.base_url) as session:
            return session.create_lora_training_client(MODEL, rank=4).get_info().model_id

    assert asyncio.run(notebook_cell())


def test_calls_in_flight_when_the_session_closes_fail_with_session_closed(server: SimServer) -> None:
    session = blocking.open_session(API_KEY, server.base_url)
    sampler = session.create_sampling_client(base_model=MODEL)
    delayed = server.stats.faults[("latency", "asample")]
    server.config.faults.latency = Latency.fixed(5.0)  # every request now waits: the call below is in flight at close
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(sampler.sample, t.ModelInput.from_ints([1, 2]), 1, t.SamplingParams(max_tokens=2))
            deadline = time.monotonic() + 10.0  # bounds the wait for the request to reach the server
            while server.stats.faults[("latency", "asample")] == delayed and time.monotonic() < deadline:
                time.sleep(0.01)
            assert server.stats.faults[("latency", "asample")] > delayed, "the sample request never arrived"
            server.config.faults.latency = None
            session.close()
            with pytest.raises(SessionClosedError):
                pending.result(timeout=10)
    finally:
        server.config.faults.latency = None
    assert _session_threads() == []


def _normalized(annotation: object) -> str:
    """An async annotation as its twin writes it: blocking futures and iterators, one name for the types module."""
    text = re.sub(r"\bAPIFuture\b", "Future", str(annotation))
    text = re.sub(r"\bAsyncIterator\b", "Iterator", text)
    return re.sub(r"\b(t|_types)\.", "types.", text)


def _shape(signature: inspect.Signature) -> list[tuple[str, object, object, str]]:
    return [(p.name, p.kind, p.default, _normalized(p.annotation)) for p in signature.parameters.values()]


def test_twins_have_the_async_signatures() -> None:
    pairs = [
        (tx.Session, blocking.Session),
        (tx.TrainingClient, blocking.TrainingClient),
        (tx.SamplingClient, blocking.SamplingClient),
        (tx.RestClient, blocking.RestClient),
    ]
    for async_cls, twin in pairs:
        for name in inspect.get_annotations(async_cls):  # instance attributes (model_id, sampling_session_id, ...)
            assert name.startswith("_") or isinstance(getattr(twin, name, None), property), f"{twin.__name__}.{name}"
        for name, member in vars(async_cls).items():
            if name.startswith("_"):
                continue
            assert hasattr(twin, name), f"{twin.__name__}.{name} has no blocking twin"
            if not callable(member) or isinstance(member, property):
                continue
            ours = inspect.signature(getattr(twin, name))
            theirs = inspect.signature(member)
            assert _shape(ours) == _shape(theirs), name
            assert ours.return_annotation == _normalized(theirs.return_annotation), name
    opener = inspect.signature(tx.open_session).parameters
    assert inspect.signature(blocking.open_session).parameters == opener


def test_the_generated_file_is_current() -> None:
    assert _blocking_gen.TARGET.read_text() == _blocking_gen.render(), "run python -m tinkex_trio._blocking_gen"


_SIGINT_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from tinkex_trio import blocking, types as t
    with blocking.open_session("tml-blocking-test-key", sys.argv[1]) as session:
        sampler = session.create_sampling_client(base_model="meta-llama/Llama-3.2-1B")
        print(session.session_id, flush=True)
        while True:
            sampler.sample(t.ModelInput.from_ints([1, 2, 3]), 1, t.SamplingParams(max_tokens=2))
    """
)


def test_sigint_in_a_subprocess_finishes_interrupted_within_2_s(server: SimServer) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINKER_")}
    with subprocess.Popen(
        [sys.executable, "-c", _SIGINT_SCRIPT, server.base_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        try:
            assert proc.stdout is not None
            session_id = proc.stdout.readline().strip()
            proc.send_signal(signal.SIGINT)
            started = time.monotonic()
            _, stderr = proc.communicate(timeout=10)
            elapsed = time.monotonic() - started
        finally:
            if proc.poll() is None:
                proc.kill()
    assert session_id, stderr
    assert elapsed < 2.0, (elapsed, stderr)
    assert proc.returncode != 0 and "KeyboardInterrupt" in stderr  # as any Python program interrupted
    assert _finished(server, session_id) == "interrupted"


def test_the_readme_blocking_snippet_runs_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "blocking.open_session" in b]
    assert len(blocks) == 1
    exec(compile(blocks[0], "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("loss ") and float(out[0].split()[1]) > 0
    assert out[1].startswith("[") and _session_threads() == []


def test_a_session_that_ends_on_its_own_says_why() -> None:
    """A failure inside the session's own tasks ends its block: later calls fail with SessionClosedError naming it."""

    @asynccontextmanager
    async def crashing() -> AsyncIterator[trio.Event]:
        trigger = trio.Event()

        async def background() -> None:
            await trigger.wait()
            raise ValueError("a background task failed")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(background)
            yield trigger

    portal = Portal(crashing, name="tinkex-trio-session")
    trigger: trio.Event = portal.session

    async def pull() -> None:
        trigger.set()

    portal.call(pull)
    portal.thread.join(timeout=10)  # the failure ends the run
    assert not portal.thread.is_alive()
    with pytest.raises(SessionClosedError, match="ValueError: a background task failed") as info:
        portal.call(pull)
    assert isinstance(info.value.__cause__, ValueError)
    portal.close()
    assert not portal.thread.is_alive()
