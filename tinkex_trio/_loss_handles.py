"""Custom losses created once per session (``Session.create_custom_loss``) and used by handle.

A per-datum loss ``fn(logprobs, *inputs) -> (loss, metrics)`` written with torch is traced with ``torch.fx`` into a
graph of torch / math / operator calls and tensor methods, checked, and kept in a :class:`LossHandle`. Where the
server says so (``custom_loss_server_side`` in its client config) the graph is uploaded (``create_custom_loss``) and
``forward_backward_custom(data, handle)`` becomes one ``forward_backward`` with ``loss_fn="custom"`` and the
server's ``loss_id``; elsewhere the handle runs here, under the same rules, through the two calls of a client-side
custom loss (:mod:`tinkex_trio._custom_loss`). PyTorch is needed to create a handle and imported only then.

The rules (the same as the service's): ``fn`` takes ``logprobs`` first, then one parameter per ``loss_fn_inputs`` key
it reads (lowercase names, plain positional parameters, at most 16 in all), each with a declared rank (0, 1 or 2;
``logprobs`` 1 or 2); it returns a scalar loss tensor and a dict of scalar tensors keyed ``custom/<name>:sum`` or
``custom/<name>:mean``; it calls only torch, math and operator functions and tensor methods (no ``backward``, no
``item`` / ``numpy`` / ``tolist``), no ``torch.nn`` modules, and captures no tensor.
"""

from __future__ import annotations

import builtins
import inspect
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, cast

from tinkex_trio import types
from tinkex_trio.errors import InvalidArgumentError

__all__ = ["LossHandle", "check_loss_inputs", "encode_graph", "run_handle", "trace_loss"]

_MODULES: Final = ("torch", "math", "operator", "_operator")
_METRIC: Final = re.compile(r"custom/[a-z0-9_./-]{1,64}:(sum|mean)")
_NAME: Final = re.compile(r"[a-z_][a-z0-9_]{0,63}")
_MAX_PARAMETERS: Final = 16
_LEAVES_TORCH: Final = frozenset({"item", "numpy", "tolist"})


@dataclass(frozen=True)
class LossHandle:
    """A custom loss created by ``Session.create_custom_loss``: pass it to
    ``TrainingClient.forward_backward_custom`` in place of a function."""

    name: str
    inputs: tuple[types.CustomLossInput, ...]
    """``logprobs``, then the ``loss_fn_inputs`` keys the loss reads, in its parameters' order, with their ranks."""
    session_id: str
    """The session that created it: only that session's clients may use it."""
    graph: Any = field(repr=False, compare=False)
    """The traced ``torch.fx.GraphModule``: what runs, here or (encoded) on the server."""
    loss_id: str | None = None
    """The server's id of the uploaded loss; None when it runs client-side."""

    @property
    def input_names(self) -> tuple[str, ...]:
        """The ``loss_fn_inputs`` keys the loss reads, in order."""
        return tuple(item.name for item in self.inputs[1:])


def _fail(message: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"create_custom_loss: {message}", argument="fn")


def _parameters(fn: Callable[..., Any], ranks: Mapping[str, int]) -> tuple[types.CustomLossInput, ...]:
    name = getattr(fn, "__name__", type(fn).__name__)
    params = list(inspect.signature(fn).parameters.values())
    if not params or params[0].name != "logprobs":
        raise _fail(f"{name} must take logprobs first, then the loss_fn_inputs it reads: def loss(logprobs, weights)")
    if len(params) > _MAX_PARAMETERS:
        raise _fail(f"{name} takes {len(params)} parameters; at most {_MAX_PARAMETERS}, logprobs included")
    for param in params:
        if not _NAME.fullmatch(param.name):
            raise _fail(f"{name}'s parameter {param.name!r} must be lowercase letters, digits and underscores")
        if param.kind not in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD) or param.default is not param.empty:
            raise _fail(f"{name}'s parameter {param.name!r} must be a plain positional parameter without a default")
    names = [param.name for param in params]
    if set(ranks) != set(names):
        raise _fail(f"input_ranks must give the rank of each of {', '.join(names)}; got {sorted(ranks)}")
    for key, rank in ranks.items():
        if rank not in (0, 1, 2):
            raise _fail(f"the rank of {key!r} must be 0, 1 or 2, got {rank!r}")
    if ranks["logprobs"] == 0:
        raise _fail("logprobs has rank 1 ([T]) or 2 ([T, K])")
    return tuple(types.CustomLossInput(name=key, rank=ranks[key]) for key in names)  # type: ignore[arg-type]


def _check(name: str, graph: Any, torch: Any) -> None:
    fx = torch.fx
    for node in graph.graph.nodes:
        if node.op == "call_function":
            module = (getattr(node.target, "__module__", None) or "").split(".")[0]
            if node.target is not builtins.getattr and module not in _MODULES:
                raise _fail(f"{name} calls {getattr(node.target, '__qualname__', node.target)!r} from {module!r}")
        elif node.op == "call_method":
            if not hasattr(torch.Tensor, node.target) or node.target == "backward" or node.target in _LEAVES_TORCH:
                raise _fail(f"{name} calls the method {node.target!r}: keep every value a tensor, and return the loss")
        elif node.op in ("call_module", "get_attr"):
            raise _fail(f"{name} uses {node.target!r}: no torch.nn modules and no captured tensors")
        elif node.op == "output":
            returned = node.args[0]
            if not (isinstance(returned, tuple | list) and len(returned) == 2):  # pyright: ignore[reportUnknownArgumentType]
                raise _fail(f"{name} must return (loss, metrics)")
            loss, metrics = returned  # pyright: ignore[reportUnknownVariableType]
            if not isinstance(loss, fx.Node) or not isinstance(metrics, dict):
                raise _fail(f"{name} must return a loss tensor and a dict of metric tensors")
            for key, value in metrics.items():  # pyright: ignore[reportUnknownVariableType]
                if not (isinstance(key, str) and _METRIC.fullmatch(key)) or not isinstance(value, fx.Node):
                    raise _fail(f"{name}'s metric {key!r} must be a tensor keyed custom/<name>:sum or :mean")


def trace_loss(fn: Callable[..., Any], input_ranks: Mapping[str, int], session_id: str) -> LossHandle:
    """``fn`` traced and checked (see the module docstring), as a handle of ``session_id``."""
    try:
        import torch  # pyright: ignore[reportMissingImports]
        import torch.fx  # pyright: ignore[reportMissingImports]
    except ImportError:
        raise ImportError("create_custom_loss needs PyTorch (pip install torch)") from None
    if not callable(fn):
        raise _fail(f"fn must be a function, got {type(fn).__name__}")
    name = getattr(fn, "__name__", type(fn).__name__)
    inputs = _parameters(fn, input_ranks)
    try:
        graph = torch.fx.symbolic_trace(fn)  # pyright: ignore
    except Exception as exc:
        raise _fail(f"{name} cannot be traced by torch.fx ({exc}): no branching on tensor values") from None
    _check(name, graph, torch)
    return LossHandle(name=name, inputs=inputs, session_id=session_id, graph=graph)


def _encode(arg: Any, torch: Any) -> Any:
    if isinstance(arg, torch.fx.Node):
        return {"ref": arg.name}
    if isinstance(arg, float) and not math.isfinite(arg):
        return {"float": str(arg)}
    if arg is None or isinstance(arg, bool | int | float | str):
        return arg
    if isinstance(arg, list):
        return [_encode(a, torch) for a in arg]  # pyright: ignore[reportUnknownVariableType]
    if isinstance(arg, tuple):
        return {"tuple": [_encode(a, torch) for a in arg]}  # pyright: ignore[reportUnknownVariableType]
    if isinstance(arg, dict):
        mapping = cast("dict[Any, Any]", arg)
        return {"dict": {str(k): _encode(v, torch) for k, v in mapping.items()}}
    if isinstance(arg, slice):
        part = cast("Any", arg)  # a slice of anything
        return {"slice": [_encode(part.start, torch), _encode(part.stop, torch), _encode(part.step, torch)]}
    if arg is Ellipsis:
        return {"ellipsis": True}
    for kind, label in ((torch.dtype, "dtype"), (torch.device, "device"), (torch.layout, "layout")):
        if isinstance(arg, kind):
            return {label: str(arg).removeprefix("torch.")}
    if isinstance(arg, torch.memory_format):
        return {"memory_format": str(arg).removeprefix("torch.")}
    raise _fail(f"a {type(arg).__name__} argument cannot travel to the server")


def _qualified(target: Any) -> str:
    module = getattr(target, "__module__", None) or ""
    if module == "_operator":
        module = "operator"  # the public name of CPython's operator functions
    return f"{module}.{getattr(target, '__name__', target)}"


def encode_graph(handle: LossHandle) -> types.CustomLossGraph:
    """The handle's graph as the wire carries it: its nodes in order, arguments encoded."""
    import torch  # pyright: ignore[reportMissingImports]

    nodes = [
        types.CustomLossNode(
            op=node.op,
            name=node.name,
            target=_qualified(node.target) if node.op == "call_function" else str(node.target),
            args=[_encode(arg, torch) for arg in node.args],
            kwargs={key: _encode(arg, torch) for key, arg in node.kwargs.items()},
        )
        for node in handle.graph.graph.nodes
    ]
    return types.CustomLossGraph(nodes=nodes)


def check_loss_inputs(handle: LossHandle, data: Sequence[types.Datum]) -> None:
    """Every datum holds each input the loss reads, at its declared rank (``logprobs``: ``target_tokens``')."""
    logprobs, *rest = handle.inputs
    for index, datum in enumerate(data):
        for item, key in [(logprobs, "target_tokens"), *((x, x.name) for x in rest)]:
            tensor = datum.loss_fn_inputs.get(key)
            if tensor is None:
                raise InvalidArgumentError(
                    f"data[{index}] has no loss_fn_inputs[{key!r}], which loss {handle.name!r} reads",
                    argument=f"data[{index}]",
                )
            rank = 1 if tensor.shape is None else len(tensor.shape)
            if rank != item.rank:
                raise InvalidArgumentError(
                    f"data[{index}].loss_fn_inputs[{key!r}] has rank {rank}; loss {handle.name!r} declared "
                    f"{item.name} with rank {item.rank}",
                    argument=f"data[{index}]",
                )


def run_handle(
    handle: LossHandle, data: Sequence[types.Datum], logprobs: Sequence[Any]
) -> tuple[Any, dict[str, float]]:
    """The handle run here on each datum (torch tensors), the losses summed; ``:mean`` metrics averaged over the
    data, ``:sum`` ones summed. A client-side custom loss in the torch form (``autograd="torch"``)."""
    total: Any = None
    sums: dict[str, float] = {}
    for datum, lp in zip(data, logprobs, strict=True):
        inputs = [datum.loss_fn_inputs[key].to_torch() for key in handle.input_names]
        loss, metrics = handle.graph(lp, *inputs)
        if loss.ndim != 0:
            raise InvalidArgumentError(
                f"loss {handle.name!r} must return a scalar, got shape {tuple(loss.shape)}", argument="loss_fn"
            )
        total = loss if total is None else total + loss
        for key, value in metrics.items():
            sums[key] = sums.get(key, 0.0) + float(value.detach())
    return total, {key: value / len(data) if key.endswith(":mean") else value for key, value in sums.items()}
