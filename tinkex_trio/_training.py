"""TrainingClient: forward/backward passes, optimizer steps and checkpoints of one LoRA model (protocol §3.2, §8).

A TrainingClient is made by the session (``await session.create_lora_training_client(...)`` or
``await session.create_training_client_from_state(path)``) and lives as long as it::

    out = await trainer.forward_backward(data, "cross_entropy")      # submit, then wait for the result
    step = await trainer.optim_step(tx.AdamParams(learning_rate=1e-4))

    fwd = await trainer.submit_forward_backward(data, "cross_entropy")  # returns once the server accepted it
    opt = await trainer.submit_optim_step(adam)                         # pipelined behind it
    out, step = await fwd.result(), await opt.result()

Every call that reaches the server goes through the model's :class:`~tinkex_trio._submission.ModelSubmitter`: its
turn orders the calls (``seq_id`` 1, 2, 3, … in the order they were made), its sequence keeps every id settled
exactly once on the server (in doubt: :class:`~tinkex_trio.errors.SequenceInDoubtError` until
:meth:`TrainingClient.resend_in_doubt`; halted by a custom loss that failed between its two calls:
:class:`~tinkex_trio.errors.TrainingHaltedError` until :meth:`TrainingClient.resume`), and it chunks, batches and
encodes. See :mod:`tinkex_trio._submission` for the rules.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, overload

import trio

from tinkex_trio import types
from tinkex_trio._batching import WorkItem
from tinkex_trio._chunking import datum_bytes
from tinkex_trio._context import SessionContext
from tinkex_trio._custom_loss import (
    Autograd,
    CustomLossFn,
    backward_data,
    evaluate,
    forward_data,
    logprobs_of,
    merge_metrics,
)
from tinkex_trio._loss_handles import LossHandle, check_loss_inputs, run_handle
from tinkex_trio._rest import RestClient
from tinkex_trio._results import fetch_info
from tinkex_trio._sampling import SamplingClient, create_sampling_client
from tinkex_trio._submission import FwdBwdItem, LossFn, LossFnConfig, ModelSubmitter, settled
from tinkex_trio._telemetry import BATCH_OPTIM_STEP
from tinkex_trio._validation import (
    check_bool,
    check_data,
    check_fwdbwd,
    check_fwdbwd_items,
    check_name,
    check_optimizer_params,
    check_optimizer_params_list,
    check_path,
    check_recipients,
    check_string_map,
    check_ttl,
)
from tinkex_trio.errors import (
    BatchItemTooLargeError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    ResponseValidationError,
    TinkexError,
)

if TYPE_CHECKING:
    from tinkex_trio._futures import APIFuture

__all__ = ["TrainingClient"]


class TrainingClient:
    """One trainable LoRA model on the Tinker service.

    Made by :meth:`Session.create_lora_training_client` or :meth:`Session.create_training_client_from_state`; do not
    construct it directly. Safe to share between tasks: submissions are ordered by a FIFO turn (see the module
    docstring), and the results of concurrent calls are independent.

    Attributes:
        model_id: the server's id of the model (also the training run id), e.g. ``"<session_id>:train:0"``.
    """

    model_id: str

    def __init__(
        self,
        ctx: SessionContext,
        model_id: str,
        *,
        model_seq_id: int,
        info: types.GetInfoResponse | None = None,
    ) -> None:
        self._ctx = ctx
        self.model_id = model_id
        self._model_seq_id = model_seq_id
        self._info = info
        self._submitter = ModelSubmitter(ctx, model_id)

    def __repr__(self) -> str:
        return f"<TrainingClient model_id={self.model_id!r}>"

    # -- creation -------------------------------------------------------------------------------------------------

    # -- info -----------------------------------------------------------------------------------------------------

    async def get_info(self) -> types.GetInfoResponse:
        """The model's info (base model, LoRA rank, optimizer, tokenizer id), fetched once at creation and cached."""
        self._ctx.check_alive()
        if self._info is None:
            self._info = await fetch_info(self._ctx.transport, self.model_id)
        return self._info

    # -- forward / backward ---------------------------------------------------------------------------------------

    async def forward(
        self, data: Sequence[types.Datum], loss_fn: LossFn, loss_fn_config: LossFnConfig | None = None
    ) -> types.ForwardBackwardOutput:
        """Run the loss on ``data`` without accumulating gradients, and wait for the result.

        Returns the per-datum outputs (e.g. ``logprobs``) and the loss metrics (e.g. ``loss:sum``).
        """
        data, loss_fn, loss_fn_config = check_fwdbwd(data, loss_fn, loss_fn_config)
        future = await self.submit_forward(data, loss_fn, loss_fn_config)
        return await future.result()

    async def forward_backward(
        self, data: Sequence[types.Datum], loss_fn: LossFn, loss_fn_config: LossFnConfig | None = None
    ) -> types.ForwardBackwardOutput:
        """Run the loss on ``data`` and accumulate its gradients (applied by the next optim_step); wait for the result.

        ``loss_fn`` is a built-in loss (``cross_entropy``, ``importance_sampling``, ``ppo``, ``cispo``, ``dro``, …);
        ``loss_fn_config`` its parameters (e.g. ``{"clip_low_threshold": 0.8}``).
        """
        data, loss_fn, loss_fn_config = check_fwdbwd(data, loss_fn, loss_fn_config)
        batching = self._ctx.config.batching
        if batching.enabled and batching.coalesce:
            return await self._submitter.coalesced_forward_backward(data, loss_fn, loss_fn_config)
        future = await self.submit_forward_backward(data, loss_fn, loss_fn_config)
        return await future.result()

    async def submit_forward(
        self, data: Sequence[types.Datum], loss_fn: LossFn, loss_fn_config: LossFnConfig | None = None
    ) -> APIFuture[types.ForwardBackwardOutput]:
        """Submit a forward pass; return its future once the server accepted every chunk of it."""
        data, loss_fn, loss_fn_config = check_fwdbwd(data, loss_fn, loss_fn_config)
        return await self._submitter.submit_fwdbwd(data, loss_fn, loss_fn_config, forward_only=True)

    async def submit_forward_backward(
        self, data: Sequence[types.Datum], loss_fn: LossFn, loss_fn_config: LossFnConfig | None = None
    ) -> APIFuture[types.ForwardBackwardOutput]:
        """Submit a forward_backward pass; return its future once the server accepted every chunk of it.

        Later submissions on this client are ordered after it, so an optim_step submitted next applies its gradients.
        """
        data, loss_fn, loss_fn_config = check_fwdbwd(data, loss_fn, loss_fn_config)
        return await self._submitter.submit_fwdbwd(data, loss_fn, loss_fn_config, forward_only=False)

    async def forward_backward_custom(
        self, data: Sequence[types.Datum], loss_fn: CustomLossFn | LossHandle, *, autograd: Autograd = "numpy"
    ) -> types.ForwardBackwardOutput:
        """Run a loss of your own on ``data`` and accumulate its gradients; wait for the result.

        ``loss_fn(data, logprobs)`` gets the data and one float32 array of log-probabilities per datum (of its
        ``target_tokens``) and returns ``(loss, metrics, grads)``, ``grads[i]`` being ``dloss/dlogprobs[i]``; with
        ``autograd="torch"`` (PyTorch installed) it gets tensors and returns ``(loss, metrics)``, as the official
        SDK's custom losses do, and torch differentiates it. Two calls go out (protocol: a forward for the logprobs,
        then a ``cross_entropy`` forward_backward with ``weights = -grads``); ``loss:sum`` of the result is your loss
        (the server's surrogate is ``surrogate_loss:sum``), with your metrics added.

        Both calls are made in this client's turn: nothing else is submitted between them, and nothing is left
        waiting on the server if your function fails. A failure after the first call was sent (your function raises
        or returns something unusable, the second call is refused, the call is cancelled) is raised as itself and
        halts the client, as the official SDK does: work submitted behind it (an ``optim_step`` queued by another task)
        expected its gradients, so every later training request raises
        :class:`~tinkex_trio.errors.TrainingHaltedError` and sends nothing until :meth:`resume`.

        ``loss_fn`` may also be a :class:`LossHandle` from ``Session.create_custom_loss``: one forward_backward with
        ``loss_fn="custom"`` when the server holds it (``handle.loss_id``), else the two calls with it run here.
        """
        future = await self.submit_forward_backward_custom(data, loss_fn, autograd=autograd)
        return await future.result()

    async def submit_forward_backward_custom(
        self, data: Sequence[types.Datum], loss_fn: CustomLossFn | LossHandle, *, autograd: Autograd = "numpy"
    ) -> APIFuture[types.ForwardBackwardOutput]:
        """:meth:`forward_backward_custom`, returning once the second call was accepted (after the first one's
        result and your loss): an optim_step submitted next applies its gradients."""
        checked = check_data(data)
        if isinstance(loss_fn, LossHandle):
            if loss_fn.session_id != self._ctx.session_id:
                raise InvalidArgumentError(
                    f"loss {loss_fn.name!r} was created in session {loss_fn.session_id}: only that session's "
                    "clients may use it",
                    argument="loss_fn",
                )
            check_loss_inputs(loss_fn, checked)
            if loss_fn.loss_id is not None:  # held by the server: one forward_backward, the data as they are
                return await self.submit_forward_backward(checked, "custom", {"loss_id": loss_fn.loss_id})
            loss_fn, autograd = partial(run_handle, loss_fn), "torch"
        if not callable(loss_fn):
            raise InvalidArgumentTypeError(
                f"loss_fn must be a function (data, logprobs) -> ..., got {type(loss_fn).__name__}", argument="loss_fn"
            )
        if autograd not in ("numpy", "torch"):
            raise InvalidArgumentError(f"autograd must be 'numpy' or 'torch', got {autograd!r}", argument="autograd")
        first = forward_data(checked)
        self._ctx.check_alive()
        submitter = self._submitter
        async with submitter.ordered_turn():
            backward_sent = False
            try:
                forward = await submitter.send_fwdbwd(first, "cross_entropy", None, True)
                result = evaluate(loss_fn, checked, logprobs_of(await forward.result(), len(checked)), autograd)
                backward_sent = True
                backward = await submitter.send_fwdbwd(backward_data(checked, result), "cross_entropy", None, False)
            except BaseException as exc:
                # Work queued behind this call follows its gradients: any failure before they reached the server halts
                # the model. Not the second call's own unknown delivery (retries without a verdict, or cancelled while
                # sending): resend_in_doubt applies it exactly once, and the sequence refuses everything else
                # meanwhile. (The first call succeeded in this turn, so any doubt now is the second call's.)
                if not (backward_sent and submitter.sequence.in_doubt):
                    submitter.sequence.halt("forward_backward_custom", None if isinstance(exc, trio.Cancelled) else exc)
                raise
        return self._ctx.futures.combine(
            [backward], lambda outputs: merge_metrics(outputs[0], result), request_type="ForwardBackwardCustom"
        )

    @overload
    async def forward_backward_batch(
        self, items: Iterable[FwdBwdItem], *, return_exceptions: Literal[False] = False
    ) -> list[types.ForwardBackwardOutput]: ...

    @overload
    async def forward_backward_batch(
        self, items: Iterable[FwdBwdItem], *, return_exceptions: bool
    ) -> list[types.ForwardBackwardOutput | TinkexError]: ...

    async def forward_backward_batch(
        self, items: Iterable[FwdBwdItem], *, return_exceptions: bool = False
    ) -> list[types.ForwardBackwardOutput] | list[types.ForwardBackwardOutput | TinkexError]:
        """Run several forward_backward calls in as few requests as possible; wait for every result.

        ``items`` holds ``(data, loss_fn, loss_fn_config)`` triples; the results come back in the same order, one
        per item. With ``config.batching.enabled`` (the default), consecutive items with the same built-in loss and
        an equal config are merged into one request while the merged data fit one chunk (``fwdbwd_max_chunk_len`` /
        ``fwdbwd_max_chunk_bytes_count``, ``batching.max_batch_datums`` / ``max_batch_bytes``, at most
        ``batching.max_items`` items); the gradient accumulated is the same, since the losses are sums. A merged
        item's result holds its own outputs and its exact ``loss:sum``, recomputed from them; the merged request's
        other metrics are dropped (see :mod:`tinkex_trio._batching`). Requests are submitted in order in one turn
        (consecutive seq_ids), pipelined, then awaited. Emits ``tinkex.batch.forward_backward.start`` / ``.stop``.

        An empty batch returns ``[]`` without a request. Every item is checked before anything is sent: a bad one
        raises :class:`~tinkex_trio.errors.InvalidArgumentError`, and one holding a datum larger than the server's
        limit on one request (``fwdbwd_max_chunk_bytes_count``; a datum cannot be split)
        :class:`~tinkex_trio.errors.BatchItemTooLargeError` naming the item's index and the limit.

        Failures. The items of one merged request share its fate: they all get its output or its error.

        * ``return_exceptions=False`` (the default): at the first failure nothing more is sent; every request already
          sent is awaited to its end, then the first failure in item order is raised (so none is left unawaited).
          The items before it may have been applied, see below.
        * ``return_exceptions=True``: every request is sent and awaited; the list holds, for each item, its output
          or the :class:`~tinkex_trio.errors.TinkexError` it met (a non-TinkexError, a bug, is still raised once
          everything sent is settled).

        What the server holds for a failed item, by its error:

        * raised while sending, nothing applied: the server's refusal (an ``APIStatusError`` 4xx: its seq_id is used
          up, the model goes on), :class:`~tinkex_trio.errors.CircuitOpenError` (not sent, no seq_id taken),
          :class:`~tinkex_trio.errors.SequenceInDoubtError` *refusing* the item because an earlier one is in doubt
          (not sent), :class:`~tinkex_trio.errors.TrainingHaltedError` refusing it after a failed custom loss (not
          sent), :class:`~tinkex_trio.errors.SessionClosedError` before it was sent;
        * :class:`~tinkex_trio.errors.SequenceInDoubtError` for the item whose own request went in doubt: unknown
          until :meth:`resend_in_doubt` settles it (it is then applied exactly once); every later item is refused;
        * :class:`~tinkex_trio.errors.PartiallyAppliedError` (an item sent alone, in chunks): its ``applied`` datum
          ranges hold gradients, its ``failed`` ones do not;
        * raised after the server accepted the request: :class:`~tinkex_trio.errors.RequestFailedError` (the server
          ran it and failed it: nothing applied); any other error while waiting for the result (the poll gave up,
          the session closed, an answer that could not be read or split): the server accepted it and applies it,
          only the result was lost.
        """
        checked = check_fwdbwd_items(items)
        return_exceptions = check_bool(return_exceptions, "return_exceptions")
        ctx = self._ctx
        ctx.check_alive()
        if not checked:
            return []
        work = [WorkItem(data, loss_fn, config) for data, loss_fn, config in checked]
        limit = max(ctx.client_config.fwdbwd_max_chunk_bytes_count, 1)
        for index, item in enumerate(work):
            for position, datum in enumerate(item.data):
                if (size := datum_bytes(datum)) > limit:
                    raise BatchItemTooLargeError(
                        f"items[{index}].data[{position}] is about {size} bytes, over the limit of {limit} bytes "
                        "on one forward_backward request (fwdbwd_max_chunk_bytes_count); nothing was sent",
                        index=index,
                        datum_index=position,
                        size=size,
                        limit=limit,
                    )
        batching = ctx.config.batching
        max_items = batching.max_items if batching.enabled else 1
        return await self._submitter.run_batch(work, max_items=max_items, return_exceptions=return_exceptions)

    @overload
    async def optim_step_batch(
        self, params: Iterable[types.AdamParams | types.DimuonParams], *, return_exceptions: Literal[False] = False
    ) -> list[types.OptimStepResponse]: ...

    @overload
    async def optim_step_batch(
        self, params: Iterable[types.AdamParams | types.DimuonParams], *, return_exceptions: bool
    ) -> list[types.OptimStepResponse | TinkexError]: ...

    async def optim_step_batch(
        self, params: Iterable[types.AdamParams | types.DimuonParams], *, return_exceptions: bool = False
    ) -> list[types.OptimStepResponse] | list[types.OptimStepResponse | TinkexError]:
        """Run several optimizer steps, pipelined: submit them all in order, then wait for every result.

        Optimizer steps are never merged (each applies and clears the gradients). An empty list returns ``[]``
        without a request; every step's parameters are checked before the first is sent. Emits
        ``tinkex.batch.optim_step.start`` / ``.stop``.

        Failures, as for :meth:`forward_backward_batch`: with ``return_exceptions=False`` nothing more is sent after
        the first failure, every step already sent is awaited, then the first failure is raised; with ``True`` every
        step is sent and the list holds each step's response or its :class:`~tinkex_trio.errors.TinkexError`. A
        failed step was not applied when its error came while sending (the server's 4xx refusal,
        CircuitOpenError, a SequenceInDoubtError refusing it) or is the server's RequestFailedError; its fate is
        unknown until :meth:`resend_in_doubt` for the step whose own SequenceInDoubtError it is; any other error
        while waiting for its result means the server accepted it and applies it.
        """
        steps = check_optimizer_params_list(params)
        return_exceptions = check_bool(return_exceptions, "return_exceptions")
        ctx = self._ctx
        ctx.check_alive()
        if not steps:
            return []
        counts = {"items": len(steps), "requests": len(steps)}
        with self._submitter.batch_span(BATCH_OPTIM_STEP, counts):
            sent: list[APIFuture[types.OptimStepResponse] | Exception] = []
            for p in steps:
                try:
                    sent.append(await self.submit_optim_step(p))
                except Exception as exc:
                    sent.append(exc)
                    if not return_exceptions:
                        break
            results: list[types.OptimStepResponse | Exception] = []
            for outcome in sent:
                if isinstance(outcome, Exception):
                    results.append(outcome)
                    continue
                try:
                    results.append(await outcome.result())
                except Exception as exc:
                    results.append(exc)
            return settled(results, return_exceptions)

    # -- optimizer ------------------------------------------------------------------------------------------------

    async def optim_step(self, adam: types.AdamParams | types.DimuonParams) -> types.OptimStepResponse:
        """Apply the accumulated gradients (AdamW with ``AdamParams``, Dimuon with ``DimuonParams``) and clear them.

        The optimizer family is fixed when the model is created; the parameters must match it.
        """
        adam = check_optimizer_params(adam)
        future = await self.submit_optim_step(adam)
        return await future.result()

    async def submit_optim_step(
        self, adam: types.AdamParams | types.DimuonParams
    ) -> APIFuture[types.OptimStepResponse]:
        """Submit an optimizer step; return its future once the server accepted it."""
        adam = check_optimizer_params(adam)
        self._ctx.check_alive()
        if isinstance(adam, types.DimuonParams):

            def build(seq_id: int) -> types.OptimStepRequest:
                return types.OptimStepRequest(model_id=self.model_id, seq_id=seq_id, optimizer_params=adam)
        else:

            def build(seq_id: int) -> types.OptimStepRequest:
                return types.OptimStepRequest(model_id=self.model_id, seq_id=seq_id, adam_params=adam)

        return await self._submitter.submit_sequenced(
            "optim_step", build, "TrainingClient.optim_step", "OptimStep", types.OptimStepResponse
        )

    # -- checkpoints ----------------------------------------------------------------------------------------------

    async def save_state(
        self,
        name: str,
        *,
        ttl_seconds: int | None = None,
        overwrite: bool = False,
        user_metadata: Mapping[str, str] | None = None,
    ) -> str:
        """Save the weights and optimizer state as checkpoint ``name``; return its tinker path.

        The path is ``tinker://<model_id>/weights/<name>``; load it with :meth:`load_state` or
        :meth:`Session.create_training_client_from_state`. ``ttl_seconds`` makes the checkpoint expire;
        ``overwrite=True`` replaces a checkpoint of that name (and its metadata: ``user_metadata`` or none), which
        is otherwise refused; ``user_metadata`` (strings) is kept with the checkpoint.
        """
        name, ttl_seconds = check_name(name), check_ttl(ttl_seconds)
        overwrite = check_bool(overwrite, "overwrite")
        metadata = check_string_map(user_metadata, "user_metadata")
        self._ctx.check_alive()

        def build(seq_id: int) -> types.SaveWeightsRequest:
            return types.SaveWeightsRequest(
                model_id=self.model_id,
                path=name,
                seq_id=seq_id,
                ttl_seconds=ttl_seconds,
                overwrite=overwrite,
                user_metadata=metadata,
            )

        future = await self._submitter.submit_sequenced(
            "save_weights", build, "TrainingClient.save_state", "SaveWeights", types.SaveWeightsResponse
        )
        return (await future.result()).path

    async def load_state(self, path: str, *, with_optimizer: bool = True) -> None:
        """Load a checkpoint saved by :meth:`save_state` into this model (in place), in turn with other operations.

        ``with_optimizer=False`` loads the weights only and keeps this model's optimizer state.
        """
        path, with_optimizer = check_path(path), check_bool(with_optimizer, "with_optimizer")
        self._ctx.check_alive()

        def build(seq_id: int) -> types.LoadWeightsRequest:
            return types.LoadWeightsRequest(path=path, optimizer=with_optimizer, model_id=self.model_id, seq_id=seq_id)

        future = await self._submitter.submit_sequenced(
            "load_weights", build, "TrainingClient.load_state", "LoadWeights", types.LoadWeightsResponse
        )
        await future.result()

    async def load_state_with_optimizer(self, path: str) -> None:
        """:meth:`load_state` with the optimizer state: the official SDK's name for ``load_state(path,
        with_optimizer=True)`` (its ``load_state`` loads the weights only; ours loads both by default)."""
        await self.load_state(path, with_optimizer=True)

    async def save_weights_external(
        self, name: str, *, ttl_seconds: int | None = None, age_encryption_recipients: Sequence[str] | None = None
    ) -> types.SaveWeightsExternalResponse:
        """Export the weights in an external format as ``name``; return its path (``…/external_weights/<name>``)
        and size. Managed (listed, deleted, TTL) like other checkpoints; download links come from
        ``session.rest.get_external_weights_urls(path)``. ``age_encryption_recipients`` (at most 10 ``age1…`` or
        SSH public keys) asks the server to encrypt every file to them."""
        name, ttl_seconds = check_name(name), check_ttl(ttl_seconds)
        recipients = check_recipients(age_encryption_recipients)
        self._ctx.check_alive()

        def build(seq_id: int) -> types.SaveWeightsExternalRequest:
            return types.SaveWeightsExternalRequest(
                model_id=self.model_id,
                path=name,
                seq_id=seq_id,
                ttl_seconds=ttl_seconds,
                age_encryption_recipients=recipients,
            )

        future = await self._submitter.submit_sequenced(
            "save_weights_external",
            build,
            "TrainingClient.save_weights_external",
            "SaveWeightsExternal",
            types.SaveWeightsExternalResponse,
        )
        return await future.result()

    async def copy_weights(
        self, name_or_path: str, *, ttl_seconds: int | None = None, weights_access_token: str | None = None
    ) -> str:
        """Copy a checkpoint -- one of this model's, by name (``save_state``'s), or any ``tinker://`` path -- into
        the session's project, in a new training run of its own (storage is shared: no bytes are duplicated; the
        copy cannot be trained on). Return the copy's tinker path. See :meth:`RestClient.copy_weights`."""
        path = (
            name_or_path if name_or_path.startswith("tinker://") else f"tinker://{self.model_id}/weights/{name_or_path}"
        )
        return await RestClient(self._ctx.transport).copy_weights(
            path,
            destination_project_id=self._ctx.config.project_id,
            ttl_seconds=ttl_seconds,
            weights_access_token=weights_access_token,
        )

    async def save_weights_for_sampler(self, name: str, *, ttl_seconds: int | None = None) -> str:
        """Save the weights for sampling as ``name``; return the tinker path (``…/sampler_weights/<name>``).

        Sample from it with ``session.create_sampling_client(model_path=path)``.
        """
        name, ttl_seconds = check_name(name), check_ttl(ttl_seconds)
        self._ctx.check_alive()

        def build(seq_id: int) -> types.SaveWeightsForSamplerRequest:
            return types.SaveWeightsForSamplerRequest(
                model_id=self.model_id, path=name, seq_id=seq_id, ttl_seconds=ttl_seconds
            )

        future = await self._submitter.submit_sequenced(
            "save_weights_for_sampler",
            build,
            "TrainingClient.save_weights_for_sampler",
            "SaveWeightsForSampler",
            types.SaveWeightsForSamplerResponse,
        )
        result = await future.result()
        if result.path is None:
            raise ResponseValidationError("save_weights_for_sampler answered without a path", field="$.path")
        return result.path

    async def save_weights_and_get_sampling_client(
        self, name: str | None = None, *, record_stability_info: bool = False
    ) -> SamplingClient:
        """Save the current weights and return a SamplingClient that samples from them.

        Without ``name`` the save is ephemeral (no checkpoint is kept): the server creates the sampling session
        directly. With ``name`` the weights are saved as a sampler checkpoint (see :meth:`save_weights_for_sampler`)
        and the sampling client is created from its path. ``record_stability_info``: the server records every
        sampled sequence for ``stable_reinforce`` training.
        """
        name = check_name(name) if name is not None else None
        record = check_bool(record_stability_info, "record_stability_info")
        ctx = self._ctx
        ctx.check_alive()
        if name is not None:
            path = await self.save_weights_for_sampler(name)
            return await create_sampling_client(ctx, model_path=path, record_stability_info=record)

        def build(seq_id: int) -> types.SaveWeightsForSamplerRequest:
            # Taken in turn, once per logical request: retries re-send the same body.
            return types.SaveWeightsForSamplerRequest(
                model_id=self.model_id,
                seq_id=seq_id,
                sampling_session_seq_id=ctx.next_sampling_session_seq_id(),
                kind="snapshot",
            )

        future = await self._submitter.submit_sequenced(
            "save_weights_for_sampler",
            build,
            "TrainingClient.save_weights_and_get_sampling_client",
            "SaveWeightsForSampler",
            types.SaveWeightsForSamplerResponse,
        )
        result = await future.result()
        if result.sampling_session_id is None:
            raise ResponseValidationError(
                "save_weights_for_sampler answered without a sampling_session_id", field="$.sampling_session_id"
            )
        base_model = self._info.model_data.model_name if self._info is not None else None
        return await create_sampling_client(
            ctx, base_model=base_model, sampling_session_id=result.sampling_session_id, record_stability_info=record
        )

    # -- the model's sequence -------------------------------------------------------------------------------------

    @property
    def in_doubt(self) -> tuple[int, ...]:
        """The seq_ids whose delivery is unknown (empty when the client can go on); see :meth:`resend_in_doubt`."""
        return self._submitter.sequence.in_doubt

    async def resend_in_doubt(self) -> APIFuture[Any] | None:
        """Settle the operation whose delivery is unknown, so that the client can go on.

        Re-sends the same ``(model_id, seq_id)`` requests with the same bodies and idempotency keys: the server
        answers a re-send from its first result, so the operation is applied exactly once whether or not the first
        attempt arrived. Returns the operation's future (e.g. an ``APIFuture[OptimStepResponse]``), or ``None`` if
        nothing is in doubt. If the re-send fails again without an answer, it raises
        :class:`~tinkex_trio.errors.SequenceInDoubtError` and the client stays in doubt; CircuitOpenError leaves it
        unchanged.
        """
        return await self._submitter.resend_in_doubt()

    @property
    def halted(self) -> bool:
        """Whether the client refuses training requests because a custom loss failed between its two calls (see
        :class:`~tinkex_trio.errors.TrainingHaltedError` and :meth:`resume`)."""
        return self._submitter.sequence.halted

    def resume(self) -> None:
        """Go on after a failed custom loss halted the client, with the model as the server holds it.

        The failed :meth:`forward_backward_custom` accumulated no gradients (its second call never reached the
        server); gradients accumulated before it are still there, and the next ``optim_step`` applies them. Requests
        refused while halted were not sent: submit again what you still want. Does nothing when not halted.
        """
        self._ctx.check_alive()
        self._submitter.sequence.resume()
