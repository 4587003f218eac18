"""Acceptance: under injected server errors and connection resets, every training step is applied exactly once.

A 200-step training loop runs through tinkex_trio over real loopback TLS (`open_sim_server`) while the simulator's
fault middleware answers 20 % of all requests with a 5xx and resets the connection on 5 % of them: half of the resets
before the server sees the request, half after it has handled it -- the case where a blind re-send would apply a step
twice. The simulator counts what it applied per model; it must be exactly 200 forward_backward passes and 200 optimizer
steps, in seq_id order, with the loss still falling.

Kept fast: tiny data, zero service time, short retry delays (set through Config), a bounded run.
"""

from __future__ import annotations

import trio

from tinkex_trio import types
from tinkex_trio._config import Config
from tinkex_trio._futures import APIFuture
from tinkex_trio._session import open_session
from tinkex_trio.sim import FaultConfig, SimConfig, create_app, open_sim_server
from tinkex_trio.sim._config import ServiceTime

STEPS = 200
WINDOW = 32  # steps in flight at once: the loop waits for step n - WINDOW before submitting step n
RUN_LIMIT_S = 120.0
API_KEY = "tml-chaos-0123456789"
PATTERN = [4, 8, 15, 16, 23, 42]


async def test_every_step_applied_exactly_once_under_faults() -> None:
    faults = FaultConfig(
        seed=2024,
        error_rates={500: 0.1, 503: 0.1},
        reset_rate=0.025,
        reset_after_rate=0.025,
    )
    sim_config = SimConfig(seed=7, service=ServiceTime(base_s=0.0), faults=faults)
    tokens = [PATTERN[i % len(PATTERN)] for i in range(13)]
    data = [types.datum(tokens[:-1], target_tokens=tokens[1:], weights=[1.0] * (len(tokens) - 1))]
    adam = types.AdamParams(learning_rate=0.01)

    app = create_app(sim_config)
    async with open_sim_server(sim_config, app=app, tls=True) as server:
        config = Config.create(
            API_KEY,
            server.base_url,
            env={},
            telemetry=False,
            retry={"base_delay_s": 0.002, "max_delay_s": 0.02, "retry_budget_s": 60.0},
        )
        losses: list[float] = []
        with trio.fail_after(RUN_LIMIT_S):
            async with open_session(config=config, ssl_context=server.client_ssl_context()) as session:
                trainer = await session.create_lora_training_client("meta-llama/Llama-3.2-1B", rank=4, seed=3)
                pending: list[tuple[APIFuture[types.ForwardBackwardOutput], APIFuture[types.OptimStepResponse]]]
                pending = []
                for _ in range(STEPS):
                    fwdbwd = await trainer.submit_forward_backward(data, "cross_entropy")
                    optim = await trainer.submit_optim_step(adam)
                    pending.append((fwdbwd, optim))
                    if len(pending) > WINDOW:
                        losses.append(await finish(*pending.pop(0)))
                for step in pending:
                    losses.append(await finish(*step))
                model_id = trainer.model_id

        record = app.state.models[model_id]
        assert record.steps_applied == STEPS
        assert record.forward_backward_applied == STEPS
        assert record.applied_seq_ids == list(range(1, 2 * STEPS + 1))

    # The faults really happened, on the training calls themselves and on the polls of their results.
    faulted = {endpoint for (_, endpoint) in server.stats.faults}
    assert {"forward_backward", "optim_step", "retrieve_future"} <= faulted, server.stats.faults
    # Some training submissions were handled by the server and then lost on the way back: the re-sends must not
    # have applied them twice (checked above).
    resent = sum(server.stats.faults[("reset_after", e)] for e in ("forward_backward", "optim_step"))
    assert resent > 0, server.stats.faults
    assert server.stats.resets > 0
    assert len(losses) == STEPS
    assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])


async def finish(fwdbwd: APIFuture[types.ForwardBackwardOutput], optim: APIFuture[types.OptimStepResponse]) -> float:
    output = await fwdbwd.result()
    await optim.result()
    return output.metrics["loss:sum"]
