"""Fuzzing the simulated server: malformed input is answered with a 4xx and a JSON ``detail``, never a 500, a dropped
connection, or a future that fails with an internal error.

Each Hypothesis example runs one ``trio.run`` under an autojumping MockClock, against a fresh app that already has
a session, a trained-once model, a checkpoint and a sampling session, so the fuzzed bodies can refer to real ids.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from typing import Any

import httpx
import trio
import trio.testing
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tinkex_trio.sim._app import SimApp, create_app
from tinkex_trio.sim._config import ServiceTime, SimConfig
from tinkex_trio.sim._routes import ROUTES

KEY = {"X-API-Key": "tml-fuzz"}
PROTO = "application/x-protobuf"

# Every JSON endpoint the simulator serves without path parameters.
POST_ENDPOINTS = [r.endpoint.name for r in ROUTES if r.endpoint.method == "POST" and "{" not in r.endpoint.path]
FIELDS = [
    "session_id",
    "model_id",
    "seq_id",
    "model_seq_id",
    "base_model",
    "lora_config",
    "optimizer_config",
    "path",
    "optimizer",
    "overwrite",
    "request_id",
    "sampling_session_id",
    "sampling_session_seq_id",
    "model_path",
    "num_samples",
    "prompt",
    "sampling_params",
    "prompt_logprobs",
    "topk_prompt_logprobs",
    "target_prompt_logprobs",
    "tinker_path",
    "ttl_seconds",
    "kind",
    "target",
    "prev_cursor",
    "timeout",
    "retrieved_request_ids",
    "allow_metadata_only",
    "adam_params",
    "optimizer_params",
    "forward_backward_input",
    "events",
    "reason",
    "detail",
    "tags",
    "user_metadata",
    "sdk_version",
    "project_id",
    "type",
]
PLACEHOLDERS = ["$SESSION", "$MODEL", "$SAMPLER", "$CKPT", "$FUTURE"]

_ints = st.one_of(
    st.integers(-3, 40),
    st.sampled_from([-(2**63), -1, 0, 2**31, 2**53 + 1, 2**63 - 1, 2**64, 10**30]),
)
_floats = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([0.0, -1.0, 1e308, 1e-320]))
_strings = st.one_of(
    st.sampled_from(PLACEHOLDERS), st.sampled_from(PLACEHOLDERS), st.text(max_size=12), st.sampled_from(["", "a/b"])
)
_scalars = st.one_of(st.none(), st.booleans(), _ints, _floats, _strings)
_json = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)
_prompt = st.fixed_dictionaries(
    {
        "chunks": st.lists(
            st.fixed_dictionaries({"type": st.just("encoded_text"), "tokens": st.lists(_ints, max_size=6)})
        )
    }
)
_sampling_params = st.dictionaries(
    st.sampled_from(["max_tokens", "temperature", "top_k", "top_p", "seed", "stop"]),
    st.one_of(_ints, _floats, st.lists(_ints, max_size=3), st.text(max_size=3)),
    max_size=6,
)
_datum = st.fixed_dictionaries(
    {
        "model_input": _prompt,
        "loss_fn_inputs": st.dictionaries(
            st.sampled_from(["target_tokens", "weights", "advantages", "logprobs"]),
            st.fixed_dictionaries(
                {
                    "data": st.lists(st.one_of(_ints, _floats), max_size=6),
                    "dtype": st.sampled_from(["int64", "float32", "bogus"]),
                    "shape": st.one_of(st.none(), st.lists(_ints, max_size=2)),
                }
            ),
            max_size=3,
        ),
    }
)
_structured: st.SearchStrategy[dict[str, Any]] = st.fixed_dictionaries(
    {},
    optional={
        "session_id": _strings,
        "model_id": _strings,
        "sampling_session_id": _strings,
        "seq_id": _ints,
        "model_seq_id": _ints,
        "sampling_session_seq_id": _ints,
        "num_samples": _ints,
        "base_model": st.sampled_from(["Qwen/Qwen3-8B", "", "nope"]),
        "prompt": _prompt,
        "sampling_params": _sampling_params,
        "path": _strings,
        "tinker_path": _strings,
        "model_path": _strings,
        "ttl_seconds": _ints,
        "optimizer": st.booleans(),
        "request_id": _strings,
        "lora_config": st.dictionaries(st.sampled_from(["rank", "seed", "train_mlp"]), _ints, max_size=3),
        "adam_params": st.dictionaries(
            st.sampled_from(["learning_rate", "beta1", "beta2", "eps", "weight_decay", "grad_clip_norm"]),
            _floats,
            max_size=4,
        ),
        "forward_backward_input": st.fixed_dictionaries(
            {"data": st.lists(_datum, max_size=2), "loss_fn": st.sampled_from(["cross_entropy", "ppo", "dro", "x"])},
            optional={"loss_fn_config": st.dictionaries(st.text(max_size=8), _floats, max_size=2)},
        ),
        "target": st.fixed_dictionaries(
            {"type": st.just("sampling_session"), "sampling_session_id": _strings, "cloned_sampler_id": _ints}
        ),
        "prev_cursor": _ints,
        "timeout": _floats,
    },
)
_body = st.one_of(
    _structured.map(lambda d: json.dumps(d).encode()),
    _structured.map(lambda d: json.dumps(d).encode()),
    _json.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=40),
)
_request = st.tuples(
    st.sampled_from(POST_ENDPOINTS),
    _body,
    st.sampled_from(["application/json", PROTO, "text/plain", ""]),
)
_segment = st.one_of(st.sampled_from([*PLACEHOLDERS, "c"]), st.text(max_size=8))
_query_value = st.one_of(st.text(max_size=6), _ints.map(str), st.sampled_from(["abc", "-1", "1e3", "", "1_0"]))
_rest = st.tuples(
    st.sampled_from(["GET", "PUT", "POST", "DELETE", "PATCH"]),
    st.sampled_from(
        [
            "training_runs",
            "training_runs/{a}",
            "training_runs/{a}/checkpoints",
            "training_runs/{a}/checkpoints/{b}/{c}",
            "training_runs/{a}/checkpoints/{b}/{c}/publish",
            "training_runs/{a}/checkpoints/{b}/{c}/ttl",
            "training_runs/{a}/checkpoints/{b}/{c}/external_weights_urls",
            "checkpoints",
            "sessions",
            "sessions/{a}",
            "sessions/{a}/finish",
            "sessions/{a}/project",
            "sessions/{a}/trace_export",
            "trace_exports/{a}",
            "audit",
            "billing/usage/events",
            "billing/usage/checkpoints/current",
            "samplers/{a}",
            "{a}",
            "get_server_capabilities",
        ]
    ),
    _segment,
    st.one_of(st.sampled_from(["weights", "sampler_weights", "external_weights"]), _segment),
    _segment,
    st.dictionaries(
        st.sampled_from(
            ["limit", "offset", "access_scope", "x", "event_type", "day", "starting_on", "ending_before", "project_id"]
        ),
        _query_value,
        max_size=3,
    ),
    _body,
)


class _World:
    def __init__(self, app: SimApp, client: httpx.AsyncClient) -> None:
        self.app = app
        self.client = client
        self.ids: dict[str, str] = {}

    async def setup(self) -> None:
        async def ok(path: str, body: dict[str, Any]) -> Any:
            response = await self.client.post(f"/api/v1/{path}", json=body)
            assert response.status_code == 200, response.text
            return response.json()

        session = (await ok("create_session", {"tags": [], "sdk_version": "0.38.0"}))["session_id"]
        future = await ok(
            "create_model",
            {"session_id": session, "model_seq_id": 0, "base_model": "Qwen/Qwen3-8B", "lora_config": {"rank": 2}},
        )
        await ok("retrieve_future", {"request_id": future["request_id"]})
        model = future["model_id"]
        save = await ok("save_weights", {"model_id": model, "seq_id": 1, "path": "c"})
        ckpt = (await ok("retrieve_future", {"request_id": save["request_id"]}))["path"]
        sampler = (
            await ok(
                "create_sampling_session",
                {"session_id": session, "sampling_session_seq_id": 0, "base_model": "Qwen/Qwen3-8B"},
            )
        )["sampling_session_id"]
        self.ids = {
            "$SESSION": session,
            "$MODEL": model,
            "$SAMPLER": sampler,
            "$CKPT": ckpt,
            "$FUTURE": future["request_id"],
        }

    def fill(self, raw: bytes) -> bytes:
        text = raw.decode("utf-8", errors="surrogateescape")
        for placeholder, value in self.ids.items():
            text = text.replace(placeholder, value)
        return text.encode("utf-8", errors="surrogateescape")

    def segment(self, value: str) -> str:
        return urllib.parse.quote(self.ids.get(value, value), safe="")

    def check(self, response: httpx.Response, what: object) -> None:
        assert response.status_code < 500, (what, response.status_code, response.text)
        if response.status_code >= 400:
            assert response.headers["content-type"] == "application/json", what
            detail = response.json()["detail"]
            assert isinstance(detail, str) and detail, what

    async def finish(self) -> None:
        # Let every accepted future run (seq-gap waits included), then none may have hit an internal error.
        await trio.sleep(300.0)
        broken = [(r.request_type, r.error) for r in self.app.queue.records() if "internal" in (r.error or "")]
        assert not broken, broken
        assert self.app.status_counts[500] == 0


def _run(scenario: Any) -> None:
    async def main() -> None:
        config = SimConfig(compute_in_threads=False, seed=3, service=ServiceTime(base_s=0.001))
        app = create_app(config)
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sim", headers=KEY) as client:
            world = _World(app, client)
            await world.setup()
            await scenario(world)
            await world.finish()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


# SIM_FUZZ_EXAMPLES=2000 for a longer hunt.
FUZZ = settings(
    max_examples=int(os.environ.get("SIM_FUZZ_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@FUZZ
@given(st.lists(_request, min_size=1, max_size=12))
@example([("save_weights", b'{"model_id": "$MODEL", "seq_id": 2, "ttl_seconds": 1e30}', "application/json")])
@example([("save_weights", b'{"model_id": "$MODEL", "seq_id": 2, "ttl_seconds": %d}' % 10**30, "application/json")])
def test_fuzzed_post_bodies_get_4xx_not_5xx(requests: list[tuple[str, bytes, str]]) -> None:
    async def scenario(world: _World) -> None:
        for endpoint, raw, content_type in requests:
            headers = {"Content-Type": content_type} if content_type else {}
            response = await world.client.post(f"/api/v1/{endpoint}", content=world.fill(raw), headers=headers)
            world.check(response, (endpoint, raw, content_type))

    _run(scenario)


@FUZZ
@given(st.lists(_rest, min_size=1, max_size=12))
@example(
    [
        (
            "PUT",
            "training_runs/{a}/checkpoints/{b}/{c}/ttl",
            "$MODEL",
            "weights",
            "c",
            {},
            b'{"ttl_seconds": 10000000000000000000000000000000}',
        )
    ]
)
@example([("GET", "training_runs", "", "", "", {"limit": "-1", "offset": "abc"}, b"")])
def test_fuzzed_rest_paths_and_queries_get_4xx_not_5xx(
    requests: list[tuple[str, str, str, str, str, dict[str, str], bytes]],
) -> None:
    async def scenario(world: _World) -> None:
        for method, template, a, b, c, query, raw in requests:
            path = template.format(a=world.segment(a), b=world.segment(b), c=world.segment(c))
            body = world.fill(raw) if method in ("PUT", "POST") else None
            response = await world.client.request(
                method, f"/api/v1/{path}", params=query, content=body, headers={"Content-Type": "application/json"}
            )
            world.check(response, (method, path, query, raw))

    _run(scenario)
