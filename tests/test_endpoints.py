"""The protocol's endpoint table: names, matching, and its agreement with the client's label and fault names."""

from __future__ import annotations

import pytest

from tinkex_trio._endpoints import API_PREFIX, ENDPOINTS, Endpoint, endpoint, match


def test_names_are_unique_per_method_and_derived_from_the_template() -> None:
    keys = [(e.method, e.name) for e in ENDPOINTS]
    assert len(keys) == len(set(keys))
    assert endpoint("POST", "sessions/{id}/finish").path == f"{API_PREFIX}/sessions/{{session_id}}/finish"
    publish = endpoint("DELETE", "training_runs/{id}/checkpoints/{id}/publish")
    assert publish.path.endswith("/checkpoints/{checkpoint_id}/publish")
    with pytest.raises(KeyError):
        endpoint("PATCH", "create_session")
    with pytest.raises(ValueError):
        Endpoint("GET", "/elsewhere")


@pytest.mark.parametrize(
    ("path", "name", "params"),
    [
        ("/api/v1/asample", "asample", {}),
        ("/api/v1/sessions/s-1", "sessions/{id}", {"session_id": "s-1"}),
        ("/api/v1/sessions/search", "sessions/search", {}),
        (
            "/api/v1/training_runs/r:train:0/checkpoints/weights/a/ttl",
            "training_runs/{id}/checkpoints/{id}/ttl",
            {"training_run_id": "r:train:0", "checkpoint_id": "weights/a"},
        ),
        ("/api/v1/training_runs/r/checkpoints/weights/a", "training_runs/{id}/checkpoints/{id}", None),
    ],
)
def test_match(path: str, name: str, params: dict[str, str] | None) -> None:
    found = match(path)
    assert found is not None and found.endpoint.name == name
    if params is not None:
        assert found.params == params


@pytest.mark.parametrize(
    "path", ["/elsewhere", "/api/v1", "/api/v1/nope", "/api/v1/sessions//finish", "/api/v1/training_runs/r/x"]
)
def test_no_match(path: str) -> None:
    assert match(path) is None
