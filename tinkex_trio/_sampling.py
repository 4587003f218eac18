"""SamplingClient: text generation and prompt scoring from a base model or saved weights (protocol §3.3, §7, §8).

Made by the session (``await session.create_sampling_client(base_model=...)`` or ``model_path=...``) or by a
training client (``await trainer.save_weights_and_get_sampling_client()``)::

    res = await sampler.sample(prompt, num_samples=4, sampling_params=tx.SamplingParams(max_tokens=32))
    lps = await sampler.compute_logprobs(prompt)      # one logprob per prompt token (None for the first)

The options of the official SDK's ``sample`` are keyword arguments (``include_prompt_logprobs``,
``topk_prompt_logprobs``, ``topk_sample_logprobs``, ``target_prompt_logprobs``, ``prompt_alt_tokens_k``,
``prompt_logprobs_last_n``); their results have numpy accessors (``prompt_logprobs_np``, ``topk_prompt_logprobs_np``,
``target_prompt_logprobs_np``, ``SampledSequence.topk_logprobs_np``, ``PromptAltTokens.tokens_np``), and a result
without what was asked for is refused (:func:`check_sample_response`).

Each sample is one ``asample`` submission plus the polling of its future. Every submission attempt takes the next
``seq_id`` of this client (0, 1, 2, …), with two exceptions that keep it:

* **backpressure**: a 429 on the submission means "not now", not failure. The client waits (``Retry-After`` when the
  server gives one within bounds, else 1 s) and re-submits with the *same* ``seq_id``; for the next 10 s it lets only
  10 submissions of this client be in flight at once;
* transport-level retries do not exist here: asample goes out once per attempt.

Other retryable failures (connection errors and timeouts, 408/409/5xx, 429 from the poll, 410 for a future the server
forgot) retry the *whole* sample with a new ``seq_id`` after ``min(0.5·2^(n−1), 10)`` s ± 25 %, within the limits of
``config.retry`` (``max_retries`` retries, ``retry_budget_s`` seconds in all, backpressure waits included).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager

import msgspec
import numpy as np
import numpy.typing as npt
import trio

from tinkex_trio import types
from tinkex_trio._context import SessionContext
from tinkex_trio._endpoints import API_PREFIX as _API
from tinkex_trio._guard import RetryStep, run_with_retries
from tinkex_trio._pool_set import PoolKind
from tinkex_trio._results import SampleDecoder
from tinkex_trio._retry import RetryPolicy, outcome_from_exception, sample_retry_delay
from tinkex_trio._telemetry import RETRY
from tinkex_trio._validation import (
    SampleOptions,
    check_model_input,
    check_prompt_logprobs_last_n,
    check_sample,
    prompt_length,
)
from tinkex_trio.errors import APIStatusError, RateLimitError, ResponseValidationError

__all__ = ["SamplingClient", "check_sample_response", "create_sampling_client"]

logger = logging.getLogger("tinkex_trio.sampling")

_JSON = "application/json"
_ASAMPLE_META: dict[str, str | int | float | bool | None] = {
    "method": "POST",
    "path": f"{_API}/asample",
    "pool": "sampling",
}
_SAMPLE_RETRY_META: dict[str, str | int | float | bool | None] = {"method": "SamplingClient.sample"}
"""The metadata of a whole sample's ``tinkex.retry`` events (each retry is a new submission)."""
_BACKPRESSURE_HEADER = {"X-Tinker-Sampling-Backpressure": "1"}

#: Submissions of one client in flight at once (the official SDK's gate), and during a backpressure window.
MAX_INFLIGHT_SUBMISSIONS = 400
BACKPRESSURE_INFLIGHT_SUBMISSIONS = 10
#: How long the reduced limit lasts after a 429, and the wait when the 429 gives no usable Retry-After.
BACKPRESSURE_WINDOW_S = 10.0
BACKPRESSURE_DEFAULT_WAIT_S = 1.0
#: The shortest backpressure wait, whatever ``Retry-After`` says: a server answering ``Retry-After: 0`` to every
#: submission must not get a tight loop.
BACKPRESSURE_MIN_WAIT_S = 0.1
#: A hard bound on 429 rounds for one attempt (the retry budget normally ends them much earlier).
_MAX_BACKPRESSURE_ROUNDS = 10_000


class _BackpressureOutlasted(Exception):
    """The server kept answering 429 past the retry budget: the sample gives up (it is not a failure to retry)."""

    def __init__(self, error: RateLimitError) -> None:
        super().__init__(str(error))
        self.error = error


# --------------------------------------------------------------------------------------------------------------------
# The submission gate
# --------------------------------------------------------------------------------------------------------------------


class _SubmissionGate:
    """Admits asample submissions: at most ``limit`` in flight, ``reduced`` for ``window_s`` after a 429.

    The limit lives in a :class:`trio.CapacityLimiter` whose ``total_tokens`` is lowered on backpressure (tokens
    already out stay out; no new ones are granted above the lower limit) and raised back lazily, at the first
    admission or release after the window ended, which wakes any waiter.
    """

    def __init__(
        self,
        limit: int = MAX_INFLIGHT_SUBMISSIONS,
        reduced: int = BACKPRESSURE_INFLIGHT_SUBMISSIONS,
        window_s: float = BACKPRESSURE_WINDOW_S,
    ) -> None:
        self.limit = limit
        self.reduced = min(reduced, limit)
        self.window_s = window_s
        self.limiter = trio.CapacityLimiter(limit)
        self.backoff_until = -math.inf
        self.reduced_until = -math.inf

    def _restore(self) -> None:
        if self.limiter.total_tokens != self.limit and trio.current_time() >= self.reduced_until:
            self.limiter.total_tokens = self.limit

    def backpressure(self, wait_s: float) -> None:
        """A submission got a 429: hold every submission for ``wait_s`` s and reduce the limit for the window."""
        now = trio.current_time()
        self.backoff_until = max(self.backoff_until, now + wait_s)
        self.reduced_until = now + self.window_s
        self.limiter.total_tokens = self.reduced

    async def wait_backoff(self) -> None:
        """Sleep until the current backoff (if any) is over."""
        for _ in range(_MAX_BACKPRESSURE_ROUNDS):  # bounded: each round sleeps to a deadline a later 429 may move
            remaining = self.backoff_until - trio.current_time()
            if remaining <= 0:
                return
            await trio.sleep(remaining)

    @asynccontextmanager
    async def slot(self) -> AsyncGenerator[None]:
        """Hold one in-flight submission slot."""
        self._restore()
        async with self.limiter:
            try:
                yield
            finally:
                self._restore()


# --------------------------------------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------------------------------------


class SamplingClient:
    """Samples from one sampling session (a base model, a saved checkpoint, or a training model's snapshot).

    Made by :meth:`Session.create_sampling_client` or :meth:`TrainingClient.save_weights_and_get_sampling_client`;
    do not construct it directly. Safe to share between tasks: samples run concurrently.

    Attributes:
        sampling_session_id: the server's id of the sampling ctx, e.g. ``"<session_id>:sample:0"``.
        base_model: the base model's name, when known.
        model_path: the ``tinker://`` path of the weights sampled, for clients made from a checkpoint.
        record_stability_info: every sample asks the server to record stability information for its sequences, so
            that ``stable_reinforce`` can train on them (name them with ``Datum.with_provenance`` and each
            sequence's ``sequence_id``).
    """

    sampling_session_id: str
    base_model: str | None
    model_path: str | None
    record_stability_info: bool

    def __init__(
        self,
        ctx: SessionContext,
        sampling_session_id: str,
        *,
        base_model: str | None = None,
        model_path: str | None = None,
        rng: random.Random | None = None,
        record_stability_info: bool = False,
    ) -> None:
        self._ctx = ctx
        self.sampling_session_id = sampling_session_id
        self.base_model = base_model
        self.model_path = model_path
        self.record_stability_info = record_stability_info
        self._next_seq_id = 0
        self._gate = _SubmissionGate()
        self._rng = rng if rng is not None else random.Random()

    def __repr__(self) -> str:
        return f"<SamplingClient sampling_session_id={self.sampling_session_id!r}>"

    # -- public API -----------------------------------------------------------------------------------------------

    async def sample(
        self,
        prompt: types.ModelInput,
        num_samples: int = 1,
        sampling_params: types.SamplingParams | None = None,
        *,
        include_prompt_logprobs: bool = False,
        topk_prompt_logprobs: int = 0,
        topk_sample_logprobs: int = 0,
        target_prompt_logprobs: types.TensorData | npt.ArrayLike | None = None,
        prompt_alt_tokens_k: int = 0,
        prompt_logprobs_last_n: int | None = None,
    ) -> types.SampleResponse:
        """Generate ``num_samples`` continuations of ``prompt``.

        Args:
            prompt: the prompt tokens (``ModelInput.from_ints([...])``).
            num_samples: how many independent samples to draw.
            sampling_params: ``max_tokens``, ``temperature``, ``top_k``, ``top_p``, ``seed``, ``stop``; the
                defaults when ``None``.
            include_prompt_logprobs: also score the prompt: ``prompt_logprobs[i]`` is the logprob of prompt token
                ``i`` (``None`` for the first, which has no context; ``prompt_logprobs_np`` holds NaN there).
            topk_prompt_logprobs: also return the ``k`` most likely tokens (``(token, logprob)`` pairs) at each prompt
                position (``topk_prompt_logprobs_np``: dense ``(len(prompt), k)`` matrices).
            topk_sample_logprobs: also return the ``k`` most likely tokens at each sampled position, in each
                sequence's ``topk_logprobs`` (``topk_logprobs_np``: dense ``(len(tokens), k)`` matrices).
            target_prompt_logprobs: token ids to score at each prompt position: an int64 TensorData (or an integer
                array) of shape ``[len(prompt) - 1, K]``, whose row ``i`` names ids scored at prompt position
                ``i + 1``; ``-1`` marks a cell not asked for. Dense, or sparse CSR
                (``TensorData.sparse_from_numpy(ids, pad_value=-1)``: only the listed cells are asked for, and the
                answer comes back in the same layout). At least one id. The answer, ``target_prompt_logprobs``, has
                the same shape and layout, 0.0 where nothing was asked (``target_prompt_logprobs_np``: dense).
            prompt_alt_tokens_k: draw ``k`` tokens, independently and at the request's temperature, from the model's
                next-token distribution at every prompt position after the first: ``prompt_alt_tokens.tokens`` (int64)
                and ``.logprobs`` (float32), both ``[len(prompt) - 1, k]``, row ``i`` for prompt position ``i + 1``.
            prompt_logprobs_last_n: score only the last ``n`` prompt tokens (the earlier entries of
                ``prompt_logprobs`` and ``topk_prompt_logprobs`` are ``None``), which lets the server serve the prefix
                from its cache. Needs ``include_prompt_logprobs``; between 1 and ``len(prompt) - 1``. It does not
                affect ``target_prompt_logprobs`` or ``prompt_alt_tokens_k``.

        Returns the sequences (tokens, logprobs, stop reason, ``sequence_id``) and the prompt scores asked for.
        Arguments are checked before anything is sent (:class:`~tinkex_trio.errors.InvalidArgumentError`). A result
        without a field that was asked for (a server that ignores the option), or that scores prompt tokens before
        ``prompt_logprobs_last_n``, raises :class:`~tinkex_trio.errors.ResponseValidationError` naming the field.
        Backpressure and transient failures are retried (see the module docstring); other errors are raised at once.
        """
        options = check_sample(
            prompt,
            num_samples,
            sampling_params,
            include_prompt_logprobs,
            topk_prompt_logprobs,
            topk_sample_logprobs,
            target_prompt_logprobs,
            prompt_alt_tokens_k,
            prompt_logprobs_last_n,
        )
        self._ctx.check_alive()
        request = types.SampleRequest(
            prompt=prompt,
            sampling_params=sampling_params if sampling_params is not None else types.SamplingParams(),
            num_samples=num_samples,
            sampling_session_id=self.sampling_session_id,
            prompt_logprobs=options.include_prompt_logprobs,
            topk_prompt_logprobs=options.topk_prompt_logprobs,
            topk_sample_logprobs=options.topk_sample_logprobs,
            target_prompt_logprobs=options.target_prompt_logprobs,
            prompt_alt_tokens_k=options.prompt_alt_tokens_k,
            prompt_logprobs_last_n=options.prompt_logprobs_last_n,
            record_stability_info=True if self.record_stability_info else None,
        )
        response = await self._sample_with_retries(request)
        check_sample_response(response, options, prompt_length(prompt))
        return response

    async def compute_logprobs(
        self, prompt: types.ModelInput, *, prompt_logprobs_last_n: int | None = None
    ) -> list[float | None]:
        """The logprob of every prompt token given the tokens before it (``None`` for the first token).

        With ``prompt_logprobs_last_n``, only the last ``n`` tokens are scored (``None`` before them); it must be
        between 1 and ``len(prompt) - 1``.
        """
        prompt = check_model_input(prompt)
        check_prompt_logprobs_last_n(prompt_logprobs_last_n, True, prompt_length(prompt))
        response = await self.sample(
            prompt,
            num_samples=1,
            sampling_params=types.SamplingParams(max_tokens=1),
            include_prompt_logprobs=True,
            prompt_logprobs_last_n=prompt_logprobs_last_n,
        )
        if response.prompt_logprobs is None:  # pragma: no cover - sample() refuses such an answer
            raise ResponseValidationError(
                "asample answered without the prompt_logprobs asked for", field="$.prompt_logprobs"
            )
        return response.prompt_logprobs

    # -- internals ------------------------------------------------------------------------------------------------

    def _take_seq_id(self) -> int:
        seq_id = self._next_seq_id
        self._next_seq_id += 1
        return seq_id

    async def _sample_with_retries(self, request: types.SampleRequest) -> types.SampleResponse:
        ctx = self._ctx
        cfg = ctx.config.retry
        max_retries = 0 if ctx.client_config.sample_no_retries else cfg.max_retries
        policy = RetryPolicy(cfg)
        started = trio.current_time()

        async def attempt(n: int) -> types.SampleResponse:
            ctx.check_alive()  # a heartbeat may have found the session expired while we waited
            return await self._sample_once(msgspec.structs.replace(request, seq_id=self._take_seq_id()), started)

        def next_delay(n: int, exc: Exception) -> RetryStep | None:
            # Layer 3 of the protocol's retries: a new seq_id each time, 410 included, the SDK's ±25 % backoff.
            outcome = outcome_from_exception(exc)
            if outcome is None or n >= max_retries:
                return None
            gone = isinstance(exc, APIStatusError) and exc.status_code == 410
            if not (policy.classify(outcome)[0] or gone):
                return None
            delay = sample_retry_delay(n + 1, cfg, self._rng)
            if trio.current_time() - started + delay > cfg.retry_budget_s:
                return None
            return RetryStep(delay, "retryable_failure")

        # The whole sample (every attempt, each with a new seq_id) is one logical request for the circuit breaker,
        # as a transport request with its retries is: a flaky sampler that retries rescue never opens it.
        guard = ctx.transport.guard(PoolKind.SAMPLING, _ASAMPLE_META)
        try:
            return await run_with_retries(
                attempt, next_delay, guard, ctx.telemetry, _SAMPLE_RETRY_META, what="SamplingClient.sample"
            )
        except _BackpressureOutlasted as stop:
            raise stop.error from None

    async def _sample_once(self, request: types.SampleRequest, started: float) -> types.SampleResponse:
        """One attempt: submit (waiting out backpressure with the same seq_id), then wait for the future."""
        ctx = self._ctx
        reply = await self._submit(types.encode(request), started)
        sequence_ids = reply.sample_sequence_ids
        if sequence_ids is None:
            raise ResponseValidationError(
                "the asample future has no sample_sequence_ids", field="$.sample_sequence_ids"
            )
        future = ctx.futures.track(
            reply,
            "Sample",
            SampleDecoder(list(sequence_ids)),
            accept_proto=ctx.config.wire_format == "proto",
            # One retrieve_futures poller per sampling session instead of a long-poll per sample, if the server says.
            sampling_session_id=self.sampling_session_id if ctx.client_config.sample_use_retrieve_futures else None,
        )
        return await future.result()

    async def _submit(self, body: bytes, started: float) -> types.UntypedAPIFuture:
        ctx = self._ctx
        budget = ctx.config.retry.retry_budget_s
        max_wait = ctx.config.retry.retry_after_max_s
        for rounds in range(_MAX_BACKPRESSURE_ROUNDS):
            await self._gate.wait_backoff()
            async with self._gate.slot():
                try:
                    return await ctx.transport.request_json(
                        types.UntypedAPIFuture,
                        PoolKind.SAMPLING,
                        "POST",
                        f"{_API}/asample",
                        content=body,
                        content_type=_JSON,
                        headers=_BACKPRESSURE_HEADER,
                        retry=False,
                        breaker=False,  # counted once per sample() by _sample_with_retries
                        sdk_method="SamplingClient.sample",
                    )
                except RateLimitError as exc:
                    wait = exc.retry_after
                    if wait is None or not 0.0 <= wait <= max_wait:
                        wait = BACKPRESSURE_DEFAULT_WAIT_S
                    wait = max(wait, BACKPRESSURE_MIN_WAIT_S)
                    if trio.current_time() - started + wait > budget:
                        raise _BackpressureOutlasted(exc) from None
                    self._gate.backpressure(wait)
                    ctx.telemetry.emit(
                        RETRY,
                        {"delay_s": wait, "attempt": rounds + 1},
                        {"method": "SamplingClient.sample", "reason": "backpressure", "error": type(exc).__name__},
                    )
                    logger.debug("asample backpressure (429); re-submitting in %.3fs", wait)
        raise RateLimitError(  # pragma: no cover - the budget ends the loop long before
            "asample: too many backpressure rounds", status_code=429
        )


def _missing(what: str, option: str, field: str) -> ResponseValidationError:
    return ResponseValidationError(
        f"{option} was asked for but the asample result has no {what}; the server may predate this option",
        field=field,
    )


def check_sample_response(response: types.SampleResponse, options: SampleOptions, prompt_len: int | None) -> None:
    """Refuse a result that lacks what the request asked for, as the official SDK does (it raises for missing
    ``prompt_alt_tokens`` and for prompt logprobs scored before ``prompt_logprobs_last_n``; here every requested field
    is checked): a server that does not know an option ignores it and answers without it."""
    if options.include_prompt_logprobs and response.prompt_logprobs_np is None:
        raise _missing("prompt_logprobs", "include_prompt_logprobs", "$.prompt_logprobs")
    if options.topk_prompt_logprobs > 0 and response.topk_prompt_logprobs_np is None:
        raise _missing(
            "topk_prompt_logprobs", f"topk_prompt_logprobs={options.topk_prompt_logprobs}", "$.topk_prompt_logprobs"
        )
    if options.topk_sample_logprobs > 0:
        for i, seq in enumerate(response.sequences):
            if seq.topk_logprobs_np is None and seq.tokens_np.size > 0:
                raise _missing(
                    "topk_logprobs",
                    f"topk_sample_logprobs={options.topk_sample_logprobs}",
                    f"$.sequences[{i}].topk_logprobs",
                )
    target = options.target_prompt_logprobs
    if target is not None:
        got = response.target_prompt_logprobs
        if got is None:
            raise _missing("target_prompt_logprobs", "target_prompt_logprobs", "$.target_prompt_logprobs")
        if got.shape != target.shape:
            raise ResponseValidationError(
                f"target_prompt_logprobs has shape {got.shape}, the request's has {target.shape}",
                field="$.target_prompt_logprobs",
            )
    k = options.prompt_alt_tokens_k
    if k > 0:
        alt = response.prompt_alt_tokens
        if alt is None:
            raise _missing("prompt_alt_tokens", f"prompt_alt_tokens_k={k}", "$.prompt_alt_tokens")
        rows = None if prompt_len is None else prompt_len - 1
        for name, tensor in (("tokens", alt.tokens), ("logprobs", alt.logprobs)):
            shape = tensor.shape
            if shape is None or len(shape) != 2 or shape[1] != k or (rows is not None and shape[0] != rows):
                raise ResponseValidationError(
                    f"prompt_alt_tokens.{name} has shape {shape}, expected [{'L-1' if rows is None else rows}, {k}]",
                    field=f"$.prompt_alt_tokens.{name}",
                )
    last_n = options.prompt_logprobs_last_n
    scores = response.prompt_logprobs_np
    if last_n is not None and scores is not None:
        excluded = scores[: max(scores.size - last_n, 0)]
        if bool((~np.isnan(excluded)).any()):
            raise ResponseValidationError(
                f"prompt_logprobs_last_n={last_n} was asked for but the asample result scores prompt tokens before "
                "that suffix; the server may predate this option",
                field="$.prompt_logprobs",
            )


async def create_sampling_client(
    ctx: SessionContext,
    *,
    base_model: str | None = None,
    model_path: str | None = None,
    sampling_session_id: str | None = None,
    record_stability_info: bool = False,
) -> SamplingClient:
    """A client for an existing sampling session (``sampling_session_id``), or for a new one created with the
    session's next ``sampling_session_seq_id`` from ``base_model`` or ``model_path``. ``record_stability_info``: see
    :class:`SamplingClient`."""
    ctx.check_alive()
    if sampling_session_id is None:
        if base_model is None and model_path is None:
            raise ValueError("create_sampling_client needs a base_model or a model_path")
        request = types.CreateSamplingSessionRequest(
            session_id=ctx.session_id,
            sampling_session_seq_id=ctx.next_sampling_session_seq_id(),
            base_model=base_model,
            model_path=model_path,
        )
        created = await ctx.transport.request_json(
            types.CreateSamplingSessionResponse,
            PoolKind.SESSION,
            "POST",
            f"{_API}/create_sampling_session",
            json=request,
            sdk_method="Session.create_sampling_client",
        )
        sampling_session_id = created.sampling_session_id
    return SamplingClient(
        ctx,
        sampling_session_id,
        base_model=base_model,
        model_path=model_path,
        record_stability_info=record_stability_info,
    )
