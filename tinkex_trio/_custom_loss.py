"""Client-side custom losses (protocol §4): the pure parts of ``TrainingClient.forward_backward_custom``.

The server knows only its built-in losses, so a loss of the user's own runs in two calls:

1. a forward-only ``cross_entropy`` with zero weights returns every datum's ``logprobs``;
2. the user's loss ``C`` is evaluated on them here, with its gradient ``dC/dlogprobs``;
3. a ``cross_entropy`` forward_backward with ``weights = -dC/dlogprobs`` follows. Cross-entropy is
   ``L = -sum(weights * logprobs)``, so its gradient through the model is exactly ``C``'s (to first order: the
   logprobs are the same in both calls, nothing having changed the weights in between).

A loss is a function ``loss_fn(data, logprobs)``, given the data as passed and one float32 array per datum:

* ``autograd="numpy"`` (the default, no dependency): it returns ``(loss, metrics, grads)``, ``grads[i]`` being
  ``dC/dlogprobs[i]`` with the shape of ``logprobs[i]``;
* ``autograd="torch"`` (PyTorch installed): it gets tensors that require grad and returns ``(loss, metrics)`` with a
  torch scalar ``loss``, as the official SDK's ``forward_backward_custom`` takes it; torch differentiates it.

Everything about the user's function is checked before the second call is sent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt

from tinkex_trio import types
from tinkex_trio.errors import InvalidArgumentError

__all__ = ["Autograd", "CustomLossFn", "CustomLossResult", "backward_data", "evaluate", "forward_data", "merge_metrics"]

Autograd = Literal["numpy", "torch"]
CustomLossFn = Callable[[list[types.Datum], list[Any]], Any]
"""``(data, logprobs) -> (loss, metrics, grads)`` with numpy, ``(loss, metrics)`` with torch (see the module)."""


class CustomLossResult:
    """What the user's loss gave: its value, its metrics, and the weights of the second call (``-grad``)."""

    __slots__ = ("loss", "metrics", "weights")

    def __init__(self, loss: float, metrics: dict[str, float], weights: list[npt.NDArray[np.float32]]) -> None:
        self.loss = loss
        self.metrics = metrics
        self.weights = weights


def forward_data(data: Sequence[types.Datum]) -> list[types.Datum]:
    """The first call's data: each datum's input and target tokens, zero weights (a forward only reads logprobs)."""
    out: list[types.Datum] = []
    for index, datum in enumerate(data):
        target = datum.loss_fn_inputs.get("target_tokens")
        if target is None:
            raise InvalidArgumentError(
                f"data[{index}].loss_fn_inputs needs 'target_tokens' for a custom loss (its logprobs are read there)",
                argument=f"data[{index}]",
            )
        shape = target.shape if target.shape is not None else [target.num_values]
        out.append(
            types.Datum(
                model_input=datum.model_input,
                loss_fn_inputs={"target_tokens": target, "weights": np.zeros(shape, dtype=np.float32)},
                model_input_spans=datum.model_input_spans,
                loss_fn_input_spans=datum.loss_fn_input_spans,
            )
        )
    return out


def logprobs_of(output: types.ForwardBackwardOutput, count: int) -> list[npt.NDArray[np.float32]]:
    """Every datum's ``logprobs`` from the forward call, as float32 arrays."""
    outputs = output.loss_fn_outputs
    if len(outputs) != count or any("logprobs" not in o for o in outputs):
        raise InvalidArgumentError(
            f"the forward call answered {len(outputs)} outputs for {count} datums, without logprobs for each: "
            "a custom loss needs them",
            argument="data",
        )
    return [np.asarray(o["logprobs"].to_numpy(), dtype=np.float32) for o in outputs]


def evaluate(
    loss_fn: CustomLossFn,
    data: list[types.Datum],
    logprobs: list[npt.NDArray[np.float32]],
    autograd: Autograd,
) -> CustomLossResult:
    """Run the user's loss on ``logprobs`` and check what it returned (finite loss, one gradient per datum, of
    the logprobs' shape, finite)."""
    if autograd == "torch":
        loss, metrics, grads = _with_torch(loss_fn, data, logprobs)
    else:
        returned = loss_fn(data, [array.copy() for array in logprobs])
        if not isinstance(returned, tuple) or len(returned) != 3:  # pyright: ignore[reportUnknownArgumentType]
            raise InvalidArgumentError(
                "a custom loss (autograd='numpy') must return (loss, metrics, grads); "
                "with PyTorch, pass autograd='torch' and return (loss, metrics)",
                argument="loss_fn",
            )
        loss, metrics, grads = cast("tuple[Any, Any, Any]", returned)
    value = float(np.sum(np.asarray(loss, dtype=np.float64)))
    if not math.isfinite(value):
        raise InvalidArgumentError(f"the custom loss is not finite: {value!r}", argument="loss_fn")
    checked_metrics = _metrics(metrics)
    grads_list: list[Any] = list(grads)
    if len(grads_list) != len(logprobs):
        raise InvalidArgumentError(
            f"the custom loss gave {len(grads_list)} gradients for {len(logprobs)} datums", argument="loss_fn"
        )
    weights: list[npt.NDArray[np.float32]] = []
    for index, (grad, lp) in enumerate(zip(grads_list, logprobs, strict=True)):
        array = np.asarray(grad, dtype=np.float32)
        if array.shape != lp.shape:
            raise InvalidArgumentError(
                f"the gradient of datum {index} has shape {array.shape}, its logprobs {lp.shape}", argument="loss_fn"
            )
        if not np.all(np.isfinite(array)):
            raise InvalidArgumentError(f"the gradient of datum {index} is not finite", argument="loss_fn")
        weights.append(-array)  # cross-entropy is -sum(weights * logprobs): weights = -dC/dlogprobs
    return CustomLossResult(value, checked_metrics, weights)


def _metrics(metrics: object) -> dict[str, float]:
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise InvalidArgumentError(
            f"a custom loss's metrics must be a mapping of names to numbers, got {type(metrics).__name__}",
            argument="loss_fn",
        )
    out: dict[str, float] = {}
    for key, value in metrics.items():  # pyright: ignore[reportUnknownVariableType]
        try:
            out[str(key)] = float(value)  # pyright: ignore[reportUnknownArgumentType]
        except (TypeError, ValueError):
            raise InvalidArgumentError(f"custom loss metric {key!r} is not a number", argument="loss_fn") from None
    return out


def _with_torch(
    loss_fn: CustomLossFn, data: list[types.Datum], logprobs: list[npt.NDArray[np.float32]]
) -> tuple[Any, Any, list[npt.NDArray[np.float32]]]:
    try:
        import torch  # pyright: ignore[reportMissingImports]
    except ImportError:
        raise InvalidArgumentError(
            "autograd='torch' needs PyTorch (pip install torch); or return (loss, metrics, grads) with numpy",
            argument="autograd",
        ) from None
    tensors: list[Any] = [torch.tensor(lp).requires_grad_(True) for lp in logprobs]  # pyright: ignore
    returned = loss_fn(data, tensors)
    if not isinstance(returned, tuple) or len(returned) != 2:  # pyright: ignore[reportUnknownArgumentType]
        raise InvalidArgumentError("a custom loss (autograd='torch') must return (loss, metrics)", argument="loss_fn")
    loss, metrics = cast("tuple[Any, Any]", returned)
    loss.sum().backward()
    grads = [
        t.grad.detach().numpy() if t.grad is not None else np.zeros(lp.shape, np.float32)
        for t, lp in zip(tensors, logprobs, strict=True)
    ]
    return float(loss.detach().sum().item()), metrics, grads


def backward_data(data: Sequence[types.Datum], result: CustomLossResult) -> list[types.Datum]:
    """The second call's data: each datum's input and target tokens, ``weights = -dC/dlogprobs``."""
    return [
        types.Datum(
            model_input=datum.model_input,
            loss_fn_inputs={"target_tokens": datum.loss_fn_inputs["target_tokens"], "weights": weights},
            model_input_spans=datum.model_input_spans,
            loss_fn_input_spans=datum.loss_fn_input_spans,
        )
        for datum, weights in zip(data, result.weights, strict=True)
    ]


def merge_metrics(output: types.ForwardBackwardOutput, result: CustomLossResult) -> types.ForwardBackwardOutput:
    """The second call's output as the custom loss's: ``loss:sum`` is the custom loss (the server's cross-entropy
    surrogate moves to ``surrogate_loss:sum``), and the loss's own metrics are added."""
    metrics = dict(output.metrics)
    surrogate = metrics.pop("loss:sum", None)
    metrics.update(result.metrics)
    metrics["loss:sum"] = result.loss
    if surrogate is not None:
        metrics["surrogate_loss:sum"] = surrogate
    output.metrics = metrics
    return output
