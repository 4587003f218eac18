"""What the simulator records for the admin reads (``GET /audit``, ``GET /billing/usage/events``): an audit log of
checkpoint events and usage counted by UTC hour.

The simulator has one user and no projects, teams or organizations of its own, so the only audited events are those
of checkpoints: ``checkpoint_create`` (a named save, or a copy), ``checkpoint_read`` (loaded into a training run,
opened by a sampling session, or the source of a copy: ``purpose`` says which), ``checkpoint_delete``,
``checkpoint_publish`` and ``checkpoint_unpublish``. Usage is counted when a request's work is applied (once, however
often it was re-sent): training tokens of ``forward_backward`` and ``forward``, prompt and sampled tokens of
``asample`` (never served from a prefill cache), and named checkpoints saved. Storage is not metered.

Plain bookkeeping on the trio thread, by wall-clock time (``clock``), as the service reports it.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

__all__ = ["MAX_AUDIT_RECORDS", "AuditRecord", "Ledger", "UsageKey", "UsageKind", "hour_of"]

MAX_AUDIT_RECORDS = 100_000
"""Audit records kept (older ones are dropped)."""

UsageKind = Literal["training", "sampling_prefill", "sampling_sample", "checkpoint"]


def hour_of(moment: datetime) -> datetime:
    """The start of the UTC hour ``moment`` falls in."""
    return moment.replace(minute=0, second=0, microsecond=0)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    timestamp: datetime
    event: str
    tinker_path: str
    training_run_id: str
    session_id: str | None
    purpose: str | None = None


@dataclass(frozen=True, slots=True)
class UsageKey:
    """One counter: a kind of usage by one session on one base model, in the UTC hour from ``bucket_start``."""

    bucket_start: datetime
    kind: UsageKind
    session_id: str
    base_model: str


class Ledger:
    """The audit log and the usage counters of one simulated server."""

    def __init__(self, clock: Callable[[], datetime]) -> None:
        self._clock = clock
        self.audit: deque[AuditRecord] = deque(maxlen=MAX_AUDIT_RECORDS)
        self.usage: Counter[UsageKey] = Counter()

    def audit_checkpoint(
        self, event: str, tinker_path: str, training_run_id: str, session_id: str | None, purpose: str | None = None
    ) -> None:
        self.audit.append(AuditRecord(self._clock(), event, tinker_path, training_run_id, session_id, purpose))

    def add_usage(self, kind: UsageKind, session_id: str, base_model: str, quantity: int) -> None:
        if quantity > 0:
            self.usage[UsageKey(hour_of(self._clock()), kind, session_id, base_model)] += quantity
