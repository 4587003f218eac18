"""Session and service endpoints: client config, auth token, sessions, heartbeats, capabilities, health, telemetry."""

from __future__ import annotations

from typing import Any

import msgspec
import trio

from tinkex_trio import types as t
from tinkex_trio.sim._asgi import HTTPError, Request, Response, decode_body, json_response
from tinkex_trio.sim._core import (
    SimCore,
)


class _TelemetryBody(msgspec.Struct):
    events: list[Any] = msgspec.field(default_factory=list[Any])


class _LooseObject(msgspec.Struct):
    """Any JSON object (fields ignored)."""


async def client_config(sim: SimCore, request: Request) -> Response:
    decode_body(request, _LooseObject)
    body: dict[str, Any] = t.to_builtins(t.ClientConfigResponse())
    body["pjwt_auth_enabled"] = sim.config.jwt_auth_enabled
    body.update(sim.config.client_config)
    return json_response(body)


async def dynamic_config(sim: SimCore, request: Request) -> Response:
    if not sim.config.dynamic_config_enabled:
        raise HTTPError(404, "dynamic config is disabled on this server")
    decode_body(request, _LooseObject)
    body: dict[str, Any] = t.to_builtins(t.ClientDynamicConfigResponse())
    body.update(sim.config.dynamic_config)
    return json_response(body)


async def auth_token(sim: SimCore, request: Request) -> Response:
    if not sim.config.jwt_auth_enabled:
        raise HTTPError(404, "JWT exchange is disabled on this server")
    if not request.header("x-api-key").startswith("tml-"):
        raise HTTPError(401, "the token exchange needs an API key starting with 'tml-'")
    decode_body(request, _LooseObject)
    return json_response(t.AuthTokenResponse(jwt=sim.state.issue_jwt(sim.config.jwt_lifetime_s)))


async def create_session(sim: SimCore, request: Request) -> Response:
    body = decode_body(request, t.CreateSessionRequest)
    session = sim.state.create_session(
        tags=body.tags,
        user_metadata=body.user_metadata,
        sdk_version=body.sdk_version,
        project_id=body.project_id,
        display_name=body.display_name,
    )
    return json_response(
        t.CreateSessionResponse(session_id=session.session_id, info_message="connected to the tinkex_trio simulator")
    )


async def heartbeat(sim: SimCore, request: Request) -> Response:
    body = decode_body(request, t.SessionHeartbeatRequest)
    session = sim.state.session(body.session_id)
    session.heartbeats += 1
    session.last_heartbeat = trio.current_time()
    return json_response(t.SessionHeartbeatResponse())


async def finish_session(sim: SimCore, request: Request) -> Response:
    session = sim.state.session(request.params["session_id"])
    body = decode_body(request, t.FinishSessionRequest)
    if session.finished is None:
        session.finished = body.reason.type
        session.finish_detail = body.detail
    return json_response({})


async def capabilities(sim: SimCore, request: Request) -> Response:
    models = [
        t.SupportedModel(
            model_name=m.model_name,
            max_context_length=m.max_context_length,
            trainable=m.trainable,
            sampleable=m.sampleable,
        )
        for m in sim.config.supported_models
    ]
    return json_response(t.GetServerCapabilitiesResponse(supported_models=models))


async def healthz(sim: SimCore, request: Request) -> Response:
    return json_response(t.HealthResponse(status="ok"))


async def telemetry(sim: SimCore, request: Request) -> Response:
    if not sim.config.telemetry_enabled:
        raise HTTPError(404, "telemetry is disabled on this server")
    body = decode_body(request, _TelemetryBody)
    sim.state.telemetry_batches += 1
    sim.state.telemetry_events += len(body.events)
    return json_response(t.TelemetryResponse(status="accepted"))
