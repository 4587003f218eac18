"""The official SDK's RestClient and AdminClient and ours against one simulator: the same calls leave the same state
on the server and give the same answers (assign_session_project, export_session_trace, the admin reads, their
errors). The SDK runs its own event loop, so it runs in a subprocess (tests/equivalence_rest_sdk_script.py); ours
runs through the blocking API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest

from tinkex_trio import blocking
from tinkex_trio import types as t
from tinkex_trio.errors import BadRequestError, NotFoundError, TraceExportError
from tinkex_trio.sim import SimConfig, sim_server_in_thread
from tinkex_trio.sim._app import SimApp

SCRIPT = Path(__file__).with_name("equivalence_rest_sdk_script.py")
SPEC: dict[str, Any] = {"base_model": "meta-llama/Llama-3.2-1B", "steps": 2, "project_id": "proj-sdk"}
OUR_KEY = "tml-equivalence-rest-ours-0123"


def theirs(base_url: str, spec: dict[str, Any]) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINKER_")}
    env["TINKER_TELEMETRY"] = "0"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), base_url, json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("RESULT "))
    assert done.returncode == 0, result.get("error", done.stderr[-3000:])
    return result


def train(session: blocking.Session, steps: int) -> None:
    training = session.create_lora_training_client(SPEC["base_model"], rank=4, seed=1)
    data = [t.datum([1, 2, 3, 4], target_tokens=[2, 3, 4, 5], weights=[1.0, 1.0, 1.0, 1.0])]
    for _ in range(steps):
        training.forward_backward(data, "cross_entropy")
        training.optim_step(t.AdamParams(learning_rate=0.01))


def slices(trace: dict[str, Any]) -> list[tuple[str, str]]:
    events = sorted((e for e in trace["traceEvents"] if e["ph"] == "X"), key=lambda e: e["ts"])
    return [(e["name"], e["args"]["status"]) for e in events]


def test_assign_project_and_export_trace_as_the_sdk_does() -> None:
    config = SimConfig(seed=0, trace_export_build_s=0.2)
    with sim_server_in_thread(config) as server:
        sdk = theirs(server.base_url, SPEC)
        with blocking.open_session(OUR_KEY, server.base_url) as session:
            train(session, SPEC["steps"])
            session.rest.assign_session_project(session.session_id, "proj-ours")
            url = session.rest.export_session_trace(session.session_id)
            with urllib.request.urlopen(url, timeout=30) as response:
                ours = json.loads(response.read())
            with pytest.raises(NotFoundError) as assign_missing:
                session.rest.assign_session_project("sess-missing", "proj-ours")
            with pytest.raises(NotFoundError) as export_missing:
                session.rest.export_session_trace("sess-missing")
            our_session = session.session_id
        sessions = cast("SimApp", server.app).state.sessions
        assert sessions[sdk["session_id"]].project_id == "proj-sdk"
        assert sessions[our_session].project_id == "proj-ours"

    # Both URLs serve the trace of their own session's requests, the same requests in the same order.
    assert sdk["url"].startswith(server.base_url) and url.startswith(server.base_url)
    assert slices(sdk["trace"]) == slices(ours)
    assert [name for name, _ in slices(ours)] == ["CreateModel"] + ["ForwardBackward", "OptimStep"] * SPEC["steps"]
    assert sdk["trace"]["otherData"]["session_id"] == sdk["session_id"]
    # The same errors, by the same names.
    assert sdk["errors"]["assign_unknown_session"]["type"] == type(assign_missing.value).__name__ == "NotFoundError"
    assert sdk["errors"]["export_unknown_session"]["type"] == type(export_missing.value).__name__ == "NotFoundError"


def test_a_failed_export_reports_the_servers_error_as_the_sdk_does() -> None:
    reason = "trace storage is unavailable"
    config = SimConfig(seed=0, trace_export_build_s=0.2, trace_export_error=reason)
    with sim_server_in_thread(config) as server:
        sdk = theirs(server.base_url, {**SPEC, "steps": 0, "only_export": True})
        with blocking.open_session(OUR_KEY, server.base_url) as session, pytest.raises(TraceExportError) as info:
            session.rest.export_session_trace(session.session_id)
    failed = sdk["errors"]["export"]
    assert failed["type"] == "RuntimeError"  # the SDK's; ours is a TinkexError carrying the same reason
    assert reason in failed["message"]
    assert info.value.error == reason and info.value.status == "failed"
    assert reason in str(info.value)


def test_the_admin_reads_give_the_sdks_answers() -> None:
    now = datetime(2026, 3, 2, 10, 17, 5, 250000, tzinfo=UTC)  # the simulator's wall clock, pinned
    window = {"starting_on": "2026-03-02T09:00:00Z", "ending_before": "2026-03-02T11:00:00Z"}
    spec = {**SPEC, "steps": 1, "admin": True, "day": now.date().isoformat(), **window}
    with sim_server_in_thread(SimConfig(seed=0)) as server:
        cast("SimApp", server.app).state.clock = lambda: now
        sdk = theirs(server.base_url, spec)
        with blocking.open_session(OUR_KEY, server.base_url) as session:
            rest = session.rest
            audit = rest.get_audit_log(day=now.date())
            usage = rest.get_billing_usage(window["starting_on"], window["ending_before"])
            storage = rest.get_current_checkpoint_storage_usage()
            with pytest.raises(BadRequestError):
                rest.get_billing_usage(window["starting_on"].replace(":00:00Z", ":30:00Z"), window["ending_before"])

    # What the SDK parsed, put into our types, is what we parsed: the same answers, field for field.
    assert t.convert(t.AuditLogResponse, sdk["audit"]) == audit
    assert t.convert(t.BillingUsageResponse, sdk["usage"]) == usage
    assert t.convert(t.CurrentCheckpointStorageUsageResponse, sdk["storage"]) == storage
    # And they hold what the SDK's session did.
    assert [(e.event, e.tinker_path, e.timestamp) for e in audit.entries] == [
        ("checkpoint_create", sdk["checkpoint"], now)
    ]
    assert {e.bucket_start for e in usage.data} == {datetime(2026, 3, 2, 10, tzinfo=UTC)}
    kinds = {type(e.event_info).__name__ for e in usage.data}
    assert kinds == {
        "TrainingBillingEvent",
        "SamplingPrefillBillingEvent",
        "SamplingSampleBillingEvent",
        "CheckpointBillingEvent",
    }
    assert {e.session_id for e in usage.data} == {sdk["session_id"]}
    assert [(i.checkpoint_count, i.project_id) for i in storage.data] == [(1, "default")]
    assert sdk["errors"]["usage_misaligned"]["type"] == "BadRequestError"
