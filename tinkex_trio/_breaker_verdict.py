"""What a call's outcome says about the service's health: the circuit breaker's :class:`Verdict`, and which outcome
is which (:func:`classify_exception`, :func:`classify_status`).

A policy, kept apart from the state machine (:mod:`tinkex_trio._breaker`), which only counts the verdicts it is
given, as :mod:`tinkex_trio._retry` holds which outcome is retried: :meth:`CircuitBreaker.call
<tinkex_trio._breaker.CircuitBreaker.call>` and the transport's guard (:mod:`tinkex_trio._guard`) classify an outcome
here and hand its verdict to the breaker.

What counts:

* FAILURE: no HTTP answer (:class:`~tinkex_trio.errors.APIConnectionError`, including timeouts and a proxy's empty
  400) and every 5xx. These say the service (or the path to it) is unhealthy.
* NEUTRAL: 429 and 408 (the service is alive but pushing back; rate limiting is not an outage, and counting it would
  make the breaker amplify the server's own backpressure), a nested ``CircuitOpenError``, a
  :class:`~tinkex_trio.errors.TLSError` (a certificate or protocol mismatch is a configuration problem; it is not
  retried anyway, and an open breaker would hide "certificate verify failed" behind CircuitOpenError), and any
  exception that is not a transport outcome (a bug in the caller's code, a bad or too large body): none of them
  measure the service's health.
* SUCCESS: a return, and every other 4xx: the service answered and judged the request (the fault is ours).
* Never counted at all: ``trio.Cancelled``, ``KeyboardInterrupt``, ``GeneratorExit`` (any ``BaseException`` that is not
  an ``Exception``). The call's trial slot is released and the exception propagates untouched.
"""

from __future__ import annotations

import enum

from tinkex_trio.errors import APIConnectionError, APIStatusError, TLSError

__all__ = ["Verdict", "classify_exception", "classify_status"]


class Verdict(enum.Enum):
    """What a call's outcome says about the service's health."""

    SUCCESS = "success"
    FAILURE = "failure"
    NEUTRAL = "neutral"


def classify_status(status_code: int) -> Verdict:
    """5xx → FAILURE; 408 and 429 → NEUTRAL; anything else (2xx, 3xx, other 4xx) → SUCCESS."""
    if status_code >= 500:
        return Verdict.FAILURE
    if status_code in (408, 429):
        return Verdict.NEUTRAL
    return Verdict.SUCCESS


def classify_exception(exc: Exception) -> Verdict:
    """The verdict of a call that raised ``exc`` (see the module docstring).

    Only ``Exception`` is accepted: cancellation and other ``BaseException`` are not outcomes at all.
    """
    if isinstance(exc, APIStatusError):
        return classify_status(exc.status_code)
    if isinstance(exc, TLSError):  # configuration, not health (see the module docstring)
        return Verdict.NEUTRAL
    if isinstance(exc, APIConnectionError):  # includes APITimeoutError
        return Verdict.FAILURE
    return Verdict.NEUTRAL
