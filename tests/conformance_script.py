"""Drive the official ``tinker`` SDK (0.38.0) through a full train-and-sample run against a Tinker server.

Usage: ``python tests/conformance_script.py BASE_URL`` (for HTTPS with a private CA, set ``SSL_CERT_FILE``).
Prints one line ``RESULT <json>`` with what each step returned; exits 0 when every step ran, 1 otherwise (the
JSON then holds the failing step and its error). Run by tests/test_conformance.py in a subprocess.
"""

from __future__ import annotations

import json
import math
import sys
import time
import traceback
import warnings
from typing import Any

import tinker
from tinker import types

API_KEY = "tml-conformance-0123456789"
BASE_MODEL = "meta-llama/Llama-3.2-1B"
PATTERN = [5, 17, 42, 99, 7, 13, 21, 34, 55, 89]
NUM_DATUMS = 5  # more than the server's fwdbwd_max_chunk_len (2), so fwd/bwd calls are chunked
STEPS = 6


def _datum(tokens: list[int], extra: dict[str, list[float]] | None = None) -> types.Datum:
    inputs: dict[str, Any] = {"target_tokens": tokens[1:], "weights": [1.0] * (len(tokens) - 1)}
    if extra is not None:
        inputs = {"target_tokens": tokens[1:], **extra}
    return types.Datum(model_input=types.ModelInput.from_ints(tokens[:-1]), loss_fn_inputs=inputs)


def _logprobs_of(output: dict[str, Any]) -> list[float]:
    tensor = output["logprobs"]
    return [float(x) for x in tensor.tolist()]


def _count_pyqwest_requests() -> dict[str, int]:
    """Count the requests that go through pyqwest's httpx transport (instrumentation only)."""
    counter = {"requests": 0}
    try:
        from pyqwest.httpx import AsyncPyqwestTransport
    except ImportError:
        return counter
    original = AsyncPyqwestTransport.handle_async_request

    async def counted(self: Any, request: Any) -> Any:
        counter["requests"] += 1
        return await original(self, request)

    AsyncPyqwestTransport.handle_async_request = counted  # type: ignore[method-assign]
    return counter


def run(base_url: str, results: dict[str, Any]) -> None:
    step = "service_client"
    results["step"] = step
    t0 = time.monotonic()
    service = tinker.ServiceClient(base_url=base_url, api_key=API_KEY)

    results["step"] = "rest client"
    rest = tinker.RestClient(base_url=base_url, api_key=API_KEY)
    caps = rest.get_server_capabilities().result()
    results["models"] = [m.model_name for m in caps.supported_models]

    results["step"] = "create_lora_training_client"
    training = service.create_lora_training_client(base_model=BASE_MODEL, rank=8, seed=1).result()
    results["model_id"] = str(training.model_id)
    info = training.get_info()
    results["info_model_name"] = info.model_data.model_name

    data = [_datum(PATTERN) for _ in range(NUM_DATUMS)]
    adam = types.AdamParams(learning_rate=0.05)

    results["step"] = "forward_backward cross_entropy"
    ce_losses: list[float] = []
    for _ in range(STEPS):
        fwdbwd = training.forward_backward(data, "cross_entropy").result()
        ce_losses.append(float(fwdbwd.metrics["loss:sum"]))
        results["ce_outputs"] = len(fwdbwd.loss_fn_outputs)
        results["ce_output_len"] = len(_logprobs_of(fwdbwd.loss_fn_outputs[0]))
        optim = training.optim_step(adam).result()
        results["optim_metrics_type"] = type(optim.metrics).__name__
    results["ce_losses"] = ce_losses

    results["step"] = "forward (forward-only)"
    fwd = training.forward(data, "cross_entropy").result()
    sampler_logprobs = [_logprobs_of(out) for out in fwd.loss_fn_outputs]
    results["forward_loss"] = float(fwd.metrics["loss:sum"])

    results["step"] = "forward_backward ppo"
    ppo_losses: list[float] = []
    ppo_data = [_datum(PATTERN, {"logprobs": lps, "advantages": [1.0] * len(lps)}) for lps in sampler_logprobs]
    for _ in range(3):
        ppo = training.forward_backward(
            ppo_data, "ppo", loss_fn_config={"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}
        ).result()
        ppo_losses.append(float(ppo.metrics["loss:sum"]))
        results["ppo_outputs"] = len(ppo.loss_fn_outputs)
        training.optim_step(adam).result()
    results["ppo_losses"] = ppo_losses

    results["step"] = "save_state"
    saved = training.save_state("conformance-1").result()
    results["saved_path"] = saved.path

    results["step"] = "load_state"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # load_state is deprecated in 0.38.0, still part of the protocol
        loaded = training.load_state(saved.path).result()  # pyright: ignore[reportDeprecated]
    results["loaded"] = loaded.path if loaded.path is not None else "ok"

    results["step"] = "save_weights_and_get_sampling_client"
    sampler = training.save_weights_and_get_sampling_client().result()

    results["step"] = "sample"
    prompt = types.ModelInput.from_ints(PATTERN[:4])
    params = types.SamplingParams(max_tokens=6, temperature=0.0, seed=7, stop=[])
    sample = sampler.sample(prompt=prompt, num_samples=2, sampling_params=params, include_prompt_logprobs=True).result()
    results["sample_sequences"] = [list(seq.tokens) for seq in sample.sequences]
    results["sample_stop_reasons"] = [str(seq.stop_reason) for seq in sample.sequences]
    plp = sample.prompt_logprobs or []
    results["prompt_logprobs"] = [None if (x is None or math.isnan(x)) else float(x) for x in plp]

    results["step"] = "compute_logprobs"
    lps = sampler.compute_logprobs(types.ModelInput.from_ints(PATTERN)).result()
    results["compute_logprobs"] = [None if x is None else float(x) for x in lps]

    results["step"] = "rest list_checkpoints"
    checkpoints = rest.list_checkpoints(training.model_id).result()
    results["checkpoints"] = sorted(c.checkpoint_id for c in checkpoints.checkpoints)
    results["checkpoint_paths"] = sorted(c.tinker_path for c in checkpoints.checkpoints)

    results["step"] = "close"
    service.close("success", detail="conformance run").result()
    results["step"] = "done"
    results["elapsed_s"] = round(time.monotonic() - t0, 3)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: conformance_script.py BASE_URL", file=sys.stderr)
        return 2
    results: dict[str, Any] = {"sdk_version": tinker.__version__}
    pyqwest = _count_pyqwest_requests()
    try:
        run(argv[1], results)
        results["pyqwest_requests"] = pyqwest["requests"]
    except Exception as exc:
        results["error"] = f"{type(exc).__name__}: {exc}"
        results["traceback"] = traceback.format_exc()
        print("RESULT " + json.dumps(results), flush=True)
        return 1
    print("RESULT " + json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
