"""The official ``tinker`` SDK's half of tests/test_equivalence_rest.py: the RestClient calls a session-level user
makes (assign_session_project, export_session_trace) and the admin reads of its AdminClient, against the
simulator, answers as JSON.

Usage: ``python tests/equivalence_rest_sdk_script.py BASE_URL SPEC_JSON``. SPEC_JSON holds ``base_model``, ``steps``
(forward_backward + optim_step pairs to run before exporting) and ``project_id``. The SDK polls a trace export every
5 s; the script shortens that module constant to 0.05 s so the test is quick (the polling loop is the SDK's own).
Prints one line ``RESULT <json>``: ``session_id``, ``url``, ``trace`` (the downloaded file, parsed), ``errors`` (the
SDK's exception for each bad call: class name and message); exits 1 with ``error`` set if anything else failed.
With ``"admin": true`` (and ``day``, ``starting_on``, ``ending_before``) it saves a checkpoint and samples, then
RESULT holds ``audit``, ``usage`` and ``storage``: the AdminClient's answers, dumped as JSON.
"""

from __future__ import annotations

import json
import sys
import traceback
import urllib.request
from datetime import date
from typing import Any

import tinker
from tinker import types
from tinker.lib.public_interfaces import rest_client as sdk_rest_client

API_KEY = "tml-equivalence-rest-0123456789"


def _error(call: Any) -> dict[str, Any]:
    try:
        call()
    except Exception as exc:
        return {"type": type(exc).__name__, "message": str(exc)}
    return {"type": None, "message": None}


def run(base_url: str, spec: dict[str, Any], results: dict[str, Any]) -> None:
    sdk_rest_client._TRACE_EXPORT_POLL_INTERVAL_SECONDS = 0.05  # pyright: ignore[reportPrivateUsage]
    service = tinker.ServiceClient(base_url=base_url, api_key=API_KEY)
    training = service.create_lora_training_client(base_model=spec["base_model"], rank=4, seed=1).result()
    data = [
        types.Datum(
            model_input=types.ModelInput.from_ints([1, 2, 3, 4]),
            loss_fn_inputs={"target_tokens": [2, 3, 4, 5], "weights": [1.0, 1.0, 1.0, 1.0]},
        )
    ]
    for _ in range(spec["steps"]):
        training.forward_backward(data, "cross_entropy").result()
        training.optim_step(types.AdamParams(learning_rate=0.01)).result()
    session_id = training.model_id.split(":train:")[0]
    results["session_id"] = session_id
    rest = service.create_rest_client()

    if spec.get("only_export"):
        results["errors"] = {"export": _error(lambda: rest.export_session_trace(session_id).result())}
        return
    if spec.get("admin"):
        admin(base_url, spec, training, results)
        return

    rest.assign_session_project(session_id, spec["project_id"]).result()
    url = rest.export_session_trace(session_id).result()
    results["url"] = url
    with urllib.request.urlopen(url, timeout=30) as response:  # a plain GET, as the SDK's docs say
        results["trace"] = json.loads(response.read())
    results["errors"] = {
        "assign_unknown_session": _error(
            lambda: rest.assign_session_project("sess-missing", spec["project_id"]).result()
        ),
        "export_unknown_session": _error(lambda: rest.export_session_trace("sess-missing").result()),
    }
    service.close("success").result()


def admin(base_url: str, spec: dict[str, Any], training: Any, results: dict[str, Any]) -> None:
    """Leave a checkpoint and a sample in the record, then the three admin reads, each answer as its JSON dump."""
    path = training.save_state("for-admin").result().path
    sampler = training.save_weights_and_get_sampling_client()
    sampler.sample(types.ModelInput.from_ints([1, 2, 3]), 2, types.SamplingParams(max_tokens=4)).result()
    client = tinker.AdminClient(base_url=base_url, api_key=API_KEY)
    audit = client.get_audit_log(day=date.fromisoformat(spec["day"])).result()
    usage = client.get_billing_usage(spec["starting_on"], spec["ending_before"]).result()
    storage = client.get_current_checkpoint_storage_usage().result()
    results["checkpoint"] = path
    results["audit"] = audit.model_dump(mode="json", exclude_none=True)
    results["usage"] = usage.model_dump(mode="json", exclude_none=True)
    results["storage"] = storage.model_dump(mode="json", exclude_none=True)
    misaligned = spec["starting_on"].replace(":00:00Z", ":30:00Z")
    results["errors"] = {
        "usage_misaligned": _error(lambda: client.get_billing_usage(misaligned, spec["ending_before"]).result())
    }


def main() -> int:
    results: dict[str, Any] = {}
    try:
        run(sys.argv[1], json.loads(sys.argv[2]), results)
    except Exception:
        results["error"] = traceback.format_exc()
        print("RESULT " + json.dumps(results), flush=True)
        return 1
    print("RESULT " + json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
