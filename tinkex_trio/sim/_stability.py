"""Stability information: what a sampler records for ``stable_reinforce``, and how a datum's provenance finds it.

A sample request with ``record_stability_info`` makes the server keep, for each sequence it returns (by its
``sequence_id``): the session that sampled it, the prompt, the sampled tokens, and the log-probability with which each
token was drawn from the distribution the sampler really used (after temperature, top-k and top-p;
`LoraModel.sampling_logprobs`). A record can be trained on for :data:`RECORD_TTL` after it was made or last used (each
training request that names it restarts the clock), only by the session that sampled it.

A datum names the records with provenance spans (protocol §4): ``model_input_spans`` tile its input tokens and
``loss_fn_input_spans`` tile its ``target_tokens``, each run ``{prompt_tokens|sampled_tokens: {sequence_id, offset,
length}}`` claiming that those positions are positions ``[offset, offset + length)`` of the named sequence's prompt or
sampled tokens. :func:`resolve_provenance` checks every claim against the records (the tokens must be the ones
recorded) and turns the ``loss_fn_input_spans`` into the loss's recorded inputs
(``tinkex_trio._losses.RECORDED_INPUTS``). :func:`check_sampled_advantages` refuses a nonzero advantage on a target that
is not a sampled token: ``stable_reinforce`` trains sampled tokens only, and the official cookbook relies on the service
refusing the rest (it rejects ``kl_discount_factor > 0`` with this loss because discounting spreads advantages onto
prompt tokens).

Plain bookkeeping: touched only from the trio thread.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

import numpy as np
import numpy.typing as npt

from tinkex_trio import types as t
from tinkex_trio.sim._model_types import F64, I64, SimUserError

__all__ = [
    "MAX_RECORDS",
    "RECORD_TTL",
    "SequenceRecord",
    "StabilityStore",
    "check_sampled_advantages",
    "resolve_provenance",
]

RECORD_TTL: Final = timedelta(days=1)
"""How long a record stays usable after it was made or last named by a training request."""
MAX_RECORDS: Final = 200_000
"""Most records kept at once; past that the least recently used are dropped (as if expired)."""


@dataclass
class SequenceRecord:
    session_id: str
    prompt: I64
    tokens: I64
    sampling_logprobs: F64
    used_at: datetime


class StabilityStore:
    """The sequences recorded with ``record_stability_info``, least recently used first."""

    def __init__(self, max_records: int = MAX_RECORDS) -> None:
        self._records: OrderedDict[str, SequenceRecord] = OrderedDict()
        self._max = max_records

    def __len__(self) -> int:
        return len(self._records)

    def record(
        self,
        session_id: str,
        sequence_ids: Sequence[str],
        prompt: I64,
        sequences: Sequence[tuple[I64, F64]],
        now: datetime,
    ) -> None:
        """Keep ``sequences`` (``(tokens, sampling_logprobs)`` each) under ``sequence_ids``, in order."""
        self.purge(now)
        shared_prompt = np.array(prompt, dtype=np.int64)
        for sequence_id, (tokens, logprobs) in zip(sequence_ids, sequences, strict=False):
            self._records[sequence_id] = SequenceRecord(
                session_id=session_id,
                prompt=shared_prompt,
                tokens=np.array(tokens, dtype=np.int64),
                sampling_logprobs=np.array(logprobs, dtype=np.float64),
                used_at=now,
            )
            self._records.move_to_end(sequence_id)
        while len(self._records) > self._max:
            self._records.popitem(last=False)

    def purge(self, now: datetime) -> None:
        """Drop the records whose time is up (the oldest are first, so this stops at the first live one)."""
        while self._records:
            first = next(iter(self._records.values()))
            if now - first.used_at <= RECORD_TTL:
                break
            self._records.popitem(last=False)

    def use(self, session_id: str, sequence_id: str, now: datetime) -> SequenceRecord:
        """The record of ``sequence_id`` for a training request of ``session_id``; restarts its clock."""
        self.purge(now)
        found = self._records.get(sequence_id)
        if found is None or found.session_id != session_id:
            raise SimUserError(
                f"unknown sequence_id {sequence_id!r}: not sampled with record_stability_info in this session, or "
                f"recorded more than {RECORD_TTL.days} day ago"
            )
        found.used_at = now
        self._records.move_to_end(sequence_id)
        return found


def _runs(spans: Sequence[t.ProvenanceSpan], length: int, what: str) -> list[tuple[bool, t.ProvenanceRun, int]]:
    """``(sampled, run, start)`` for each span, checked to tile ``length`` positions."""
    out: list[tuple[bool, t.ProvenanceRun, int]] = []
    start = 0
    for span in spans:
        run = span.run
        if run.length < 0 or run.offset < 0 or not run.sequence_id:
            raise SimUserError(f"{what}: a run needs a sequence_id, offset >= 0 and length >= 0, got {run}")
        out.append((span.sampled_tokens is not None, run, start))
        start += run.length
    if start != length:
        raise SimUserError(f"{what}: the runs cover {start} positions, the field has {length}; they must tile it")
    return out


def _claimed(
    store: StabilityStore, session_id: str, sampled: bool, run: t.ProvenanceRun, now: datetime, what: str
) -> tuple[I64, F64 | None]:
    """The recorded tokens a run claims (and, for sampled tokens, their sampling logprobs)."""
    record = store.use(session_id, run.sequence_id, now)
    source = record.tokens if sampled else record.prompt
    stop = run.offset + run.length
    if stop > source.shape[0]:
        kind = "sampled tokens" if sampled else "prompt"
        raise SimUserError(
            f"{what}: the run [{run.offset}, {stop}) is past the end of {run.sequence_id!r}'s {kind} "
            f"({source.shape[0]} tokens)"
        )
    tokens = source[run.offset : stop]
    return tokens, (record.sampling_logprobs[run.offset : stop] if sampled else None)


def resolve_provenance(
    store: StabilityStore,
    session_id: str,
    index: int,
    datum: t.Datum,
    tokens: npt.NDArray[np.int64],
    targets: npt.NDArray[np.int64],
    vocab: int,
    now: datetime,
) -> dict[str, F64]:
    """Datum ``index``'s recorded loss inputs (``sampled``, ``sampler_logprobs``, shaped like its 1-D targets), its
    provenance checked against the records; a missing, malformed or false claim raises `SimUserError`."""
    where = f"datum {index}"
    if datum.model_input_spans is None or datum.loss_fn_input_spans is None:
        raise SimUserError(
            f"{where}: stable_reinforce needs provenance: model_input_spans and loss_fn_input_spans naming sequences "
            "sampled with record_stability_info (see Datum.with_provenance)"
        )
    if targets.ndim != 1:
        raise SimUserError(f"{where}: stable_reinforce takes 1-D target_tokens, got shape {targets.shape}")
    model_input = np.mod(tokens.astype(np.int64), vocab)
    for sampled, run, start in _runs(datum.model_input_spans, model_input.shape[0], f"{where}: model_input_spans"):
        claimed, _ = _claimed(store, session_id, sampled, run, now, f"{where}: model_input_spans")
        if not np.array_equal(np.mod(claimed, vocab), model_input[start : start + run.length]):
            raise SimUserError(
                f"{where}: model_input positions [{start}, {start + run.length}) are not the tokens recorded for "
                f"{run.sequence_id!r}"
            )
    target = np.mod(targets.astype(np.int64), vocab)
    mask = np.zeros(target.shape[0])
    sampler_logprobs = np.zeros(target.shape[0])
    for sampled, run, start in _runs(datum.loss_fn_input_spans, target.shape[0], f"{where}: loss_fn_input_spans"):
        claimed, logprobs = _claimed(store, session_id, sampled, run, now, f"{where}: loss_fn_input_spans")
        stop = start + run.length
        # A prompt run's targets carry no loss, and are not compared: the official cookbook's RL loop pads them with
        # 0 (its target_tokens are [0] * prompt + sampled) while naming the prompt. Sampled runs must be the tokens.
        if sampled and not np.array_equal(np.mod(claimed, vocab), target[start:stop]):
            raise SimUserError(
                f"{where}: target_tokens positions [{start}, {stop}) are not the tokens recorded for "
                f"{run.sequence_id!r}"
            )
        if logprobs is not None:
            mask[start:stop] = 1.0
            sampler_logprobs[start:stop] = logprobs
    return {"sampled": mask, "sampler_logprobs": sampler_logprobs}


def check_sampled_advantages(index: int, advantages: F64, sampled: F64) -> None:
    """Refuse datum ``index`` if it puts a nonzero advantage on a target its ``loss_fn_input_spans`` do not name as a
    sampled token (``advantages`` and ``sampled`` are flat, one per target)."""
    stray = np.flatnonzero((advantages != 0.0) & (sampled == 0.0))
    if stray.size:
        first = int(stray[0])
        more = f" (and {stray.size - 1} more)" if stray.size > 1 else ""
        raise SimUserError(
            f"datum {index}: stable_reinforce takes nonzero advantages only on sampled tokens; target position {first}"
            f"{more} has advantage {float(advantages[first])} but is not in a sampled_tokens run"
        )
