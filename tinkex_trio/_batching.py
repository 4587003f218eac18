"""Request batching for forward_backward: the sans-I/O planner and splitter (DESIGN §3, protocol §8, §13).

A batch of forward_backward work items ``(data, loss_fn, loss_fn_config)`` is planned into fewer requests:

* :func:`plan_requests` merges *consecutive* items with the same built-in ``loss_fn`` and an equal ``loss_fn_config``
  (their datums concatenated, in order) as long as the merged data still go out as one chunk under the chunk limits
  (:func:`~tinkex_trio._chunking.plan_chunks`) and the batch holds at most ``max_items`` items. Order is preserved:
  an item is never moved across another one, so the server sees the same work in the same order.
* :func:`split_output` takes the result of a merged request and gives every item its own
  :class:`~tinkex_trio.types.ForwardBackwardOutput`: its slice of ``loss_fn_outputs`` (by datum count) and its exact
  ``loss:sum``, recomputed in float64 from its slice of the learner's ``logprobs`` and its own loss inputs.

Why it is exact. Every built-in loss is a sum of per-position terms that depend only on the learner's logprob ``lp``
at that position and the datum's own inputs (protocol §13), so the gradient of one request over A+B equals the sum of
the gradients over A and over B, and each item's ``loss:sum`` can be rebuilt from its slice:

==================== ==================================================================== ==========================
loss_fn              per-item ``loss:sum``                                                config (defaults)
==================== ==================================================================== ==========================
cross_entropy        ``-sum(lp * weights)``                                               none
importance_sampling  ``-sum(exp(lp - q) * A)``                                            none
ppo                  ``-sum(min(r*A, clip(r, lo, hi)*A))``, ``r = exp(lp - q)``           lo 0.8, hi 1.2
cispo                ``-sum(clip(r, lo, hi) * lp * A)``                                   lo 0.8, hi 1.2
dro                  ``-sum(lp*A - 0.5*beta*(lp - q)**2)``                                ``beta`` (required)
==================== ==================================================================== ==========================

(``q`` is the loss input ``logprobs``, ``A`` is ``advantages``; ``lo``/``hi`` are ``clip_low_threshold`` /
``clip_high_threshold``.) The server computes ``lp`` in full precision but sends it as float32, so the recomputed
value matches the server's ``loss:sum`` of the item sent alone to float32 rounding, not bit for bit.

What is not merged (the item goes out as its own request, exactly as an unbatched call would):

* a loss outside the table (``custom``, ``gspo``, …) or a ``loss_fn_config`` key the table does not know, a
  non-finite or non-numeric config value, or ``dro`` without an explicit ``beta`` (the spec gives no default);
* data whose loss inputs the recomputation could not read: a required input missing, a sparse tensor (the pad
  value does not travel on the wire), or an input whose size differs from ``target_tokens``'.

Metrics. A merged request returns one set of metrics for all its items. Only ``loss:sum`` can be split (it is
recomputed per item); every other metric of a merged request is dropped from the per-item results. An item sent on
its own keeps the server's metrics untouched.

Errors. A merged request fails or succeeds as a whole: if the server rejects it, every item in it fails with that
error.

The trio layer: ``TrainingClient.forward_backward_batch`` plans one call's items; the opt-in batch window
(:class:`BatchWindow`, ``batching.coalesce``), a task in the session's nursery fed by a memory channel, plans the
concurrent ``forward_backward`` calls it collected. The window knows only work items and the routes its client hands
it (:class:`WindowRoutes`), never the client.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import trio

from tinkex_trio import types
from tinkex_trio._chunking import plan_chunks
from tinkex_trio._losses import loss_and_grad
from tinkex_trio.errors import APIConnectionError, ResponseValidationError, SessionClosedError

if TYPE_CHECKING:
    from tinkex_trio._futures import APIFuture

__all__ = [
    "LOSS_SUM",
    "MERGEABLE_LOSSES",
    "BatchWindow",
    "PlannedRequest",
    "WindowRoutes",
    "WindowSlot",
    "WorkItem",
    "item_loss_sum",
    "item_output",
    "plan_requests",
    "resolve_loss_config",
    "split_output",
]

LOSS_SUM = "loss:sum"

_RL_INPUTS = ("logprobs", "advantages")
_CLIP_DEFAULTS: Mapping[str, float] = {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}

# loss_fn -> (loss inputs besides target_tokens, config defaults, config keys without a default that must be given)
_LOSSES: Mapping[str, tuple[tuple[str, ...], Mapping[str, float], tuple[str, ...]]] = {
    "cross_entropy": (("weights",), {}, ()),
    "importance_sampling": (_RL_INPUTS, {}, ()),
    "ppo": (_RL_INPUTS, _CLIP_DEFAULTS, ()),
    "cispo": (_RL_INPUTS, _CLIP_DEFAULTS, ()),
    "dro": (_RL_INPUTS, {}, ("beta",)),
}

#: The loss functions whose items may be merged (their per-item ``loss:sum`` can be recomputed).
MERGEABLE_LOSSES = frozenset(_LOSSES)

_F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One forward_backward call of a batch."""

    data: Sequence[types.Datum]
    loss_fn: str
    loss_fn_config: Mapping[str, float | str] | None = None


@dataclass(frozen=True, slots=True)
class PlannedRequest:
    """One request of a plan: the items it carries (indices into the batch, consecutive) and their data.

    ``loss_config`` is the resolved config used to recompute each item's ``loss:sum`` (defaults filled in); it is
    ``None`` for an item that cannot be merged, which then travels alone and keeps its result as the server sent it.
    """

    items: tuple[int, ...]
    counts: tuple[int, ...]
    loss_fn: str
    loss_fn_config: Mapping[str, float | str] | None
    loss_config: Mapping[str, float] | None
    data: tuple[types.Datum, ...]

    @property
    def merged(self) -> bool:
        """Whether the request carries more than one item (its result must be split)."""
        return len(self.items) > 1


# --------------------------------------------------------------------------------------------------------------------
# Mergeability
# --------------------------------------------------------------------------------------------------------------------


def resolve_loss_config(loss_fn: str, loss_fn_config: Mapping[str, float | str] | None) -> dict[str, float] | None:
    """The full config of a built-in loss (defaults filled in), or ``None`` if its items must not be merged.

    ``None`` for a loss outside :data:`MERGEABLE_LOSSES`, an unknown key, a value that is not a finite number, or a
    required key (``dro``'s ``beta``) that is missing.
    """
    spec = _LOSSES.get(loss_fn)
    if spec is None:
        return None
    _, defaults, required = spec
    resolved = dict(defaults)
    for key, value in (loss_fn_config or {}).items():
        if key not in defaults and key not in required:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return None
        resolved[key] = float(value)
    if any(key not in resolved for key in required):
        return None
    return resolved


def _readable(datum: types.Datum, inputs: tuple[str, ...]) -> bool:
    """Whether the datum has dense ``target_tokens`` and ``inputs`` of one size, so its loss can be recomputed."""
    tensors = datum.loss_fn_inputs
    target = tensors.get("target_tokens")
    if target is None:
        return False
    for name in ("target_tokens", *inputs):
        tensor = tensors.get(name)
        if tensor is None or tensor.sparse_crow_indices is not None or tensor.sparse_col_indices is not None:
            return False
        if tensor.num_values != target.num_values:
            return False
    return True


def _config_key(config: Mapping[str, float | str] | None) -> dict[str, float | str]:
    # None and {} both mean "the defaults" on the wire.
    return dict(config) if config else {}


# --------------------------------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------------------------------


def plan_requests(
    items: Sequence[WorkItem],
    *,
    datum_bytes: Callable[[types.Datum], int],
    max_len: int,
    max_bytes: int,
    max_items: int,
) -> list[PlannedRequest]:
    """Plan the requests of a batch, in order (see the module docstring).

    Consecutive mergeable items with the same ``loss_fn`` and an equal ``loss_fn_config`` share a request while the
    merged data form a single chunk under ``max_len`` datums / ``max_bytes`` estimated bytes
    (:func:`~tinkex_trio._chunking.plan_chunks`) and the request holds at most ``max_items`` items. An item too large
    for one chunk travels alone (and is chunked as any call is). Every item ends up in exactly one request; the
    requests list the items in their original order. An empty item raises :class:`ValueError`.
    """
    if max_items < 1:
        raise ValueError(f"max_items must be >= 1, got {max_items}")
    plan: list[PlannedRequest] = []
    # The open request: its items, their sizes, and what they share.
    group: list[int] = []
    group_sizes: list[int] = []
    group_config: dict[str, float] | None = None

    def close() -> None:
        nonlocal group, group_sizes, group_config
        if group:
            first = items[group[0]]
            plan.append(
                PlannedRequest(
                    items=tuple(group),
                    counts=tuple(len(items[i].data) for i in group),
                    loss_fn=first.loss_fn,
                    loss_fn_config=first.loss_fn_config,
                    loss_config=group_config,
                    data=tuple(d for i in group for d in items[i].data),
                )
            )
        group, group_sizes, group_config = [], [], None

    for index, item in enumerate(items):
        if not item.data:
            raise ValueError(f"forward_backward_batch item {index} has no data")
        resolved = resolve_loss_config(item.loss_fn, item.loss_fn_config)
        if resolved is not None:
            inputs = _LOSSES[item.loss_fn][0]
            if not all(_readable(d, inputs) for d in item.data):
                resolved = None
        sizes = [datum_bytes(d) for d in item.data]
        if group and resolved is not None and group_config is not None:
            previous = items[group[-1]]
            if (
                previous.loss_fn == item.loss_fn
                and _config_key(previous.loss_fn_config) == _config_key(item.loss_fn_config)
                and len(group) < max_items
                and len(plan_chunks([*group_sizes, *sizes], max_len, max_bytes)) == 1
            ):
                group.append(index)
                group_sizes.extend(sizes)
                continue
        close()
        group, group_sizes, group_config = [index], sizes, resolved
    close()
    return plan


# --------------------------------------------------------------------------------------------------------------------
# Splitting
# --------------------------------------------------------------------------------------------------------------------


def _flat(tensor: types.TensorData) -> _F64:
    return np.asarray(tensor.to_numpy(), dtype=np.float64).reshape(-1)


def item_loss_sum(
    loss_fn: str,
    loss_config: Mapping[str, float],
    data: Sequence[types.Datum],
    outputs: Sequence[types.LossFnOutput],
) -> float:
    """The exact ``loss:sum`` of one item from the learner's ``logprobs`` of its datums (protocol §13), in float64.

    ``loss_config`` is the resolved config (:func:`resolve_loss_config`). :class:`ResponseValidationError` if an
    output has no ``logprobs`` or their size does not match the datum's ``target_tokens``; :class:`ValueError` for a
    loss outside :data:`MERGEABLE_LOSSES`.
    """
    spec = _LOSSES.get(loss_fn)
    if spec is None:
        raise ValueError(f"cannot recompute the loss of {loss_fn!r}")
    if len(data) != len(outputs):
        raise ResponseValidationError(f"{len(outputs)} loss_fn_outputs for {len(data)} datums")
    lps: list[_F64] = []
    columns: dict[str, list[_F64]] = {name: [] for name in spec[0]}
    for i, (datum, output) in enumerate(zip(data, outputs, strict=True)):
        tensor = output.get("logprobs")
        if tensor is None:
            raise ResponseValidationError("a loss_fn_output has no logprobs", field=f"$.loss_fn_outputs[{i}]")
        try:
            lp = _flat(tensor)
        except ValueError as exc:
            raise ResponseValidationError(
                f"unreadable logprobs: {exc}", field=f"$.loss_fn_outputs[{i}].logprobs"
            ) from None
        expected = len(datum.loss_fn_inputs["target_tokens"].data)
        if lp.size != expected:
            raise ResponseValidationError(
                f"{lp.size} logprobs for {expected} target tokens", field=f"$.loss_fn_outputs[{i}].logprobs"
            )
        lps.append(lp)
        for name, column in columns.items():
            column.append(_flat(datum.loss_fn_inputs[name]))
    lp = np.concatenate(lps)
    inputs = {name: np.concatenate(column) for name, column in columns.items()}
    loss, _ = loss_and_grad(loss_fn, lp, inputs, loss_config)
    return float(np.sum(loss))


def split_output(
    request: PlannedRequest, items: Sequence[WorkItem], output: types.ForwardBackwardOutput
) -> list[types.ForwardBackwardOutput]:
    """The per-item results of a planned request, in the order of ``request.items`` (see :func:`item_output`)."""
    return [item_output(request, items, output, position) for position in range(len(request.items))]


def item_output(
    request: PlannedRequest, items: Sequence[WorkItem], output: types.ForwardBackwardOutput, position: int
) -> types.ForwardBackwardOutput:
    """The result of the ``position``-th item of a planned request (``items`` is the batch the plan was made from).

    A request of one item returns ``output`` as it is. For a merged request, the item gets its slice of
    ``loss_fn_outputs`` (by datum count), the merged ``loss_fn_output_type``, and ``metrics == {"loss:sum": …}``
    recomputed from the slice; the merged request's other metrics are dropped. :class:`ResponseValidationError` if
    the output does not hold one entry per datum.
    """
    if not request.merged:
        return output
    total = sum(request.counts)
    if len(output.loss_fn_outputs) != total:
        raise ResponseValidationError(
            f"a merged forward_backward of {total} datums returned {len(output.loss_fn_outputs)} loss_fn_outputs",
            field="$.loss_fn_outputs",
        )
    assert request.loss_config is not None  # only mergeable items are ever merged
    offset = sum(request.counts[:position])
    outputs = output.loss_fn_outputs[offset : offset + request.counts[position]]
    loss = item_loss_sum(request.loss_fn, request.loss_config, items[request.items[position]].data, outputs)
    return types.ForwardBackwardOutput(
        loss_fn_output_type=output.loss_fn_output_type, loss_fn_outputs=list(outputs), metrics={LOSS_SUM: loss}
    )


# --------------------------------------------------------------------------------------------------------------------
# The batch window task (DESIGN §2)
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowRoutes:
    """What the batch window is handed by its client; it knows nothing else of it.

    Attributes:
        take_ticket: the client's next ticket (every ordered call takes one when it is made).
        turn: the client's FIFO turn, held while submitting (so nothing else takes seq_ids meanwhile).
        plan: plans a batch of items into requests (the client's chunk limits).
        send: submits one planned request (the turn is held) and returns its future.
        span: telemetry around one flush, given its counts.
    """

    take_ticket: Callable[[], int]
    turn: Callable[[], AbstractAsyncContextManager[object]]
    plan: Callable[[Sequence[WorkItem]], list[PlannedRequest]]
    send: Callable[[PlannedRequest], Awaitable[APIFuture[types.ForwardBackwardOutput]]]
    span: Callable[[Mapping[str, int]], AbstractContextManager[object]]


@dataclass(eq=False)
class WindowSlot:
    """One forward_backward call waiting in the batch window, and what it gets once its request is accepted."""

    ticket: int
    item: WorkItem
    arrived: float
    done: trio.Event = field(default_factory=trio.Event)
    taken: bool = False
    batch: Sequence[WorkItem] = ()
    request: PlannedRequest | None = None
    position: int = 0
    future: APIFuture[types.ForwardBackwardOutput] | None = None
    error: Exception | None = None


class BatchWindow:
    """Coalesces the concurrent forward_backward calls of one client (``batching.coalesce``).

    Calls arrive over a memory channel (:meth:`add`, never blocking) with their ticket. The window's task
    (:meth:`run`, in the session's nursery) submits what arrived ``window_s`` after the oldest call, or at once when
    ``max_items`` are waiting. Any other call of the client first submits the calls older than its own ticket
    (:meth:`submit_before`, under the client's turn), so nothing is reordered, never across an optim_step. A
    submission plans merged requests (:func:`plan_requests`) and hands every call its request's future.
    """

    def __init__(self, routes: WindowRoutes, *, window_s: float, max_items: int, closed_message: str) -> None:
        self._routes = routes
        self._window_s = window_s
        self._max_items = max(max_items, 1)
        self._closed_message = closed_message
        self._send, self._receive = trio.open_memory_channel[WindowSlot](math.inf)
        self._pending: list[WindowSlot] = []

    def add(self, slot: WindowSlot) -> None:
        """Queue a call (not a checkpoint)."""
        self._send.send_nowait(slot)

    def discard(self, slot: WindowSlot) -> None:
        """Forget a call that was cancelled before it was taken (a no-op once taken)."""
        self._drain()
        if not slot.taken and slot in self._pending:
            self._pending.remove(slot)

    def _take(self, slot: WindowSlot) -> None:
        # Not ``self._pending.append(await ...)``: that binds the list before the await, and a caller's
        # submit_before may replace the list meanwhile.
        self._pending.append(slot)

    def _drain(self) -> None:
        while True:
            try:
                self._pending.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return

    async def run(self) -> None:
        """Submit the calls when their window closes; runs for the life of the session (cancelled with it). Calls
        still waiting when it ends fail with SessionClosedError."""
        try:
            while True:
                self._drain()
                if not self._pending:
                    self._take(await self._receive.receive())
                    continue
                with trio.move_on_at(self._pending[0].arrived + self._window_s):
                    while len(self._pending) < self._max_items:
                        self._take(await self._receive.receive())
                if self._pending:  # a later call of the client may have submitted them meanwhile
                    ticket = self._routes.take_ticket()
                    async with self._routes.turn():
                        await self.submit_before(ticket)
        finally:
            self._drain()
            self._receive.close()
            closed = SessionClosedError(self._closed_message)
            for slot in self._pending:
                slot.error = closed
                slot.done.set()
            self._pending.clear()

    async def submit_before(self, ticket: int) -> None:
        """Submit the queued calls with a ticket below ``ticket``, in order, as merged requests (the turn is held)."""
        self._drain()
        slots = [s for s in self._pending if s.ticket < ticket]
        if not slots:
            return
        self._pending = [s for s in self._pending if s.ticket >= ticket]
        batch = [s.item for s in slots]
        plan = self._routes.plan(batch)
        for slot in slots:
            slot.taken = True
            slot.batch = batch
        counts = {"items": len(batch), "requests": len(plan), "datums": sum(len(w.data) for w in batch)}
        with self._routes.span(counts):
            for done, request in enumerate(plan):
                mine = [slots[i] for i in request.items]
                try:
                    future = await self._routes.send(request)
                except Exception as exc:
                    for position, slot in enumerate(mine):
                        slot.request, slot.position, slot.error = request, position, exc
                        slot.done.set()
                    continue
                except BaseException:
                    # Cancelled mid-submission: this request may or may not have reached the server (the client is
                    # in doubt about it); the later ones did not, and go back to the front of the queue.
                    cut = APIConnectionError("the batched forward_backward was cancelled while it was being sent")
                    for slot in mine:
                        slot.error = cut
                        slot.done.set()
                    later = [slots[i] for r in plan[done + 1 :] for i in r.items]
                    for slot in later:
                        slot.taken = False
                    self._pending[:0] = later
                    raise
                for position, slot in enumerate(mine):
                    slot.request, slot.position, slot.future = request, position, future
                    slot.done.set()
