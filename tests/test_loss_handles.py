"""Custom losses by handle (``Session.create_custom_loss``): traced with torch.fx and checked as the service checks
them, run client-side where the server does not take them, uploaded and named by ``loss_id`` where it does. PyTorch
is needed to create a handle: without it the error says so (always tested); the rest runs where torch is installed
(``nox -s torch``)."""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

import pytest
from _simkit import Reply, pattern_batch, sim_config, sim_stack

import tinkex_trio as tx
from tinkex_trio import types as t
from tinkex_trio._proto import _codec
from tinkex_trio.errors import InvalidArgumentError, RequestFailedError

BASE = "Qwen/Qwen3-8B"


data = pattern_batch


def neg_ll(logprobs: Any, weights: Any) -> Any:
    loss = -(logprobs * weights).sum()
    return loss, {"custom/neg_ll:sum": loss, "custom/tokens:mean": weights.sum()}


async def test_without_pytorch_the_error_says_what_is_needed(
    autojump_clock: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "torch.fx", None)
    async with sim_stack(sim_config()) as stack, stack.session() as session:
        with pytest.raises(ImportError, match="PyTorch"):
            await session.create_custom_loss(neg_ll, {"logprobs": 1, "weights": 1})


torch_only = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None,
    reason="creating a custom loss handle needs PyTorch (pip install torch; nox -s torch)",
)


@torch_only
async def test_a_handle_runs_client_side_as_the_built_in_loss(autojump_clock: object) -> None:
    async with sim_stack(sim_config()) as stack, stack.session() as session:
        handle = await session.create_custom_loss(neg_ll, {"logprobs": 1, "weights": 1})
        assert isinstance(handle, tx.LossHandle) and handle.loss_id is None and handle.input_names == ("weights",)
        builtin = await session.create_lora_training_client(BASE, rank=4, seed=3)
        custom = await session.create_lora_training_client(BASE, rank=4, seed=3)
        expected = await builtin.forward_backward(data(), "cross_entropy")
        got = await custom.forward_backward_custom(data(), handle)
        assert got.metrics["loss:sum"] == pytest.approx(expected.metrics["loss:sum"], rel=1e-5)
        assert got.metrics["custom/neg_ll:sum"] == pytest.approx(expected.metrics["loss:sum"], rel=1e-5)
        tokens = [len(d.loss_fn_inputs["weights"].to_numpy()) for d in data()]
        assert got.metrics["custom/tokens:mean"] == pytest.approx(sum(tokens) / len(tokens))
    # No create_custom_loss request: this server does not take custom losses.
    assert not stack.rec.requests("create_custom_loss")


@torch_only
@pytest.mark.parametrize(
    ("fn", "ranks", "message"),
    [
        (lambda lp: (lp.sum(), {}), {"lp": 1}, "logprobs first"),
        (neg_ll, {"logprobs": 1}, "input_ranks"),
        (neg_ll, {"logprobs": 0, "weights": 1}, "rank 1"),
        (lambda logprobs: (logprobs.sum().item(), {}), {"logprobs": 1}, "item"),
        (lambda logprobs: (logprobs.sum(), {"bad key": logprobs.sum()}), {"logprobs": 1}, "custom/<name>"),
        (lambda logprobs: logprobs.sum(), {"logprobs": 1}, "return \\(loss, metrics\\)"),
    ],
)
async def test_bad_losses_are_refused_when_created(autojump_clock: object, fn: Any, ranks: Any, message: str) -> None:
    async with sim_stack(sim_config()) as stack, stack.session() as session:
        with pytest.raises(InvalidArgumentError, match=message):
            await session.create_custom_loss(fn, ranks)


@torch_only
async def test_a_handle_checks_the_data_and_its_session(autojump_clock: object) -> None:
    async with sim_stack(sim_config()) as stack, stack.session() as session:
        handle = await session.create_custom_loss(neg_ll, {"logprobs": 1, "weights": 1})
        trainer = await session.create_lora_training_client(BASE, rank=4)
        no_weights = [t.datum([1, 2, 3], target_tokens=[2, 3, 4])]
        with pytest.raises(InvalidArgumentError, match="weights"):
            await trainer.forward_backward_custom(no_weights, handle)
        async with stack.session() as other:
            foreign = await other.create_custom_loss(neg_ll, {"logprobs": 1, "weights": 1})
        with pytest.raises(InvalidArgumentError, match="only that session"):
            await trainer.forward_backward_custom(data(), foreign)


@torch_only
async def test_where_the_server_takes_custom_losses_the_handle_is_uploaded_and_named(autojump_clock: object) -> None:
    config = sim_config()
    config.client_config = {"custom_loss_server_side": True}
    async with sim_stack(config) as stack, stack.session() as session:
        stack.rec.script("create_custom_loss", Reply(body={"request_id": "req-custom-loss-1"}))
        stack.rec.script("retrieve_future", Reply(body={"loss_id": "loss-7", "type": "create_custom_loss"}))
        handle = await session.create_custom_loss(neg_ll, {"logprobs": 1, "weights": 1})
        assert handle.loss_id == "loss-7"
        trainer = await session.create_lora_training_client(BASE, rank=4)
        with pytest.raises(RequestFailedError):  # the simulator itself runs no custom loss
            await trainer.forward_backward_custom(data(), handle)
    (upload,) = stack.rec.requests("create_custom_loss")
    body = upload.json()
    assert body["custom_loss_seq_id"] == 0 and body["name"] == "neg_ll"
    assert body["inputs"] == [{"name": "logprobs", "rank": 1}, {"name": "weights", "rank": 1}]
    nodes = body["graph"]["nodes"]
    first = {key: nodes[0][key] for key in ("op", "name", "target")}
    assert body["graph"]["format"] == 1 and first == {"op": "placeholder", "name": "logprobs", "target": "logprobs"}
    assert any(n["op"] == "call_function" and n["target"] == "operator.mul" for n in nodes)
    assert nodes[-1]["op"] == "output"
    fwdbwd = [s for s in stack.rec.requests("forward_backward")]
    decoded = _codec.decode_forward_backward_request(fwdbwd[-1].body)
    assert decoded.loss_fn == "custom" and decoded.loss_fn_config == {"loss_id": "loss-7"}
