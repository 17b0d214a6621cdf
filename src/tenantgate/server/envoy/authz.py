"""Envoy's external authorization (``envoy.service.auth.v3.Authorization/Check``) as a CheckAccess: an HTTP
request Envoy holds becomes an access request (``requests.http_access``), the decider decides it as it decides
every CheckAccess (same verifier and cache, decision log and metrics), and the decision becomes Envoy's answer:
upstream headers on allow, a 401 / 403 / 400 response on refusal. Nothing is decided here.

Caller input never becomes a gRPC error, which Envoy's ``failure_mode_allow`` could turn into an allow: a
malformed request is refused with 400. Only a server that cannot decide at all (no snapshot, a snapshot staler
than ``--max-staleness``, a tenant it cannot compile) answers UNAVAILABLE, and Envoy's failure mode decides."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2
from google.rpc import code_pb2, status_pb2

from tenantgate.engines.access import Reason
from tenantgate.engines.tokens import TokenProblem
from tenantgate.errors import FailedPrecondition, InvalidArgument, Unavailable
from tenantgate.server.decider import Decider
from tenantgate.server.envoy.requests import TENANT_HEADER, Refusal, http_access
from tenantgate.server.status import maps_errors

# Request headers set for the upstream on every answer that lets the request through, each replacing whatever
# the client sent under that name (and removed when there is no value for it): the upstream can trust them.
SUBJECT_HEADER = "x-tenant-subject"
SUBJECT_TENANT_HEADER = "x-tenant-subject-tenant"
DECISION_ID_HEADER = "x-tenantgate-decision-id"
SHADOW_HEADER = "x-tenantgate-shadow-decision"
UPSTREAM_HEADERS = (TENANT_HEADER, SUBJECT_HEADER, SUBJECT_TENANT_HEADER, DECISION_ID_HEADER, SHADOW_HEADER)

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_TOKEN_REASONS = frozenset({Reason.TOKEN_INVALID, Reason.TOKEN_EXPIRED})
# Printable ASCII but "%": what a header value keeps as it is; anything else is percent-encoded (RFC 3986).
_HEADER_SAFE = "".join(chr(code) for code in range(0x20, 0x7F) if chr(code) != "%")


@dataclass(slots=True)
class GateAnswer:
    """What Envoy is told: ``status`` 200 lets the request through; 400, 401 or 403 refuses it."""

    status: int
    reason: str
    tenant_id: str = ""
    subject: str = ""
    subject_tenant_id: str = ""
    decision_id: str = ""
    rule: str = ""
    revision: int = 0
    detail: str = ""
    token_given: bool = False


class AuthorizationServicer(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    def __init__(self, decider: Decider) -> None:
        self._decider = decider

    @maps_errors
    async def Check(self, request: external_auth_pb2.CheckRequest,
                    context: grpc.aio.ServicerContext) -> external_auth_pb2.CheckResponse:
        attributes = request.attributes
        shadow = attributes.context_extensions.get("mode") == "shadow"
        try:
            answer = await self._answer(attributes)
        except InvalidArgument as error:
            answer = GateAnswer(400, "INVALID_REQUEST", detail=error.message)
        except (Unavailable, FailedPrecondition) as error:
            if not shadow:
                raise Unavailable(error.message) from None
            answer = GateAnswer(503, "UNAVAILABLE", detail=error.message)
        return _response(answer, shadow)

    async def _answer(self, attributes: attribute_context_pb2.AttributeContext) -> GateAnswer:
        snapshot = self._decider.snapshot()
        request = http_access(attributes)
        if isinstance(request, Refusal):
            return GateAnswer(401, request.reason, detail=request.detail, token_given=request.token_given)
        if not request.tenant_id:
            # The token names the tenant: the home tenant of a token that verifies.
            verified = await self._decider.verify_token(snapshot, request.token)
            if verified.token is None:
                if verified.problem is TokenProblem.TENANT_UNAVAILABLE:
                    raise Unavailable(verified.detail)
                reason = Reason.TOKEN_EXPIRED if verified.problem is TokenProblem.EXPIRED else Reason.TOKEN_INVALID
                return GateAnswer(401, reason.name, detail=verified.detail, token_given=True)
            request.tenant_id = verified.token.tenant_id
        needed = self._decider.to_compile(snapshot, request)
        if needed:
            await self._decider.compile(needed)
        decision, decision_id = self._decider.decide(snapshot, request)
        status = 200 if decision.allowed else 401 if decision.reason in _TOKEN_REASONS else 403
        # A tenant that does not exist is not named to the upstream, even on a shadow route.
        tenant_id = "" if decision.reason is Reason.TENANT_NOT_FOUND else request.tenant_id
        return GateAnswer(status, decision.reason.name, tenant_id, decision.subject,
                          decision.subject_tenant_id, decision_id, decision.rule, snapshot.revision,
                          token_given=bool(request.token))


def _header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=key, value=quote(value, safe=_HEADER_SAFE)),
                                      append_action=_OVERWRITE)


def _metadata(answer: GateAnswer, shadow: bool) -> struct_pb2.Struct:
    """For Envoy's access log: %DYNAMIC_METADATA(envoy.filters.http.ext_authz:decision_id)% and the rest."""
    metadata = struct_pb2.Struct()
    metadata.update({"decision_id": answer.decision_id, "tenant_id": answer.tenant_id, "subject": answer.subject,
                     "subject_tenant_id": answer.subject_tenant_id, "reason": answer.reason, "rule": answer.rule,
                     "revision": answer.revision, "allowed": answer.status == 200,
                     "mode": "shadow" if shadow else "enforce"})
    return metadata


def _response(answer: GateAnswer, shadow: bool) -> external_auth_pb2.CheckResponse:
    if answer.status == 200 or shadow:
        return external_auth_pb2.CheckResponse(status=status_pb2.Status(code=code_pb2.OK),
                                               ok_response=_let_through(answer),
                                               dynamic_metadata=_metadata(answer, shadow))
    headers = [_header("content-type", "application/json")]
    if answer.decision_id:
        headers.append(_header(DECISION_ID_HEADER, answer.decision_id))
    code = code_pb2.PERMISSION_DENIED
    if answer.status == 401:
        code = code_pb2.UNAUTHENTICATED
        headers.append(_header("www-authenticate", _challenge(answer)))
    elif answer.status == 400:
        code = code_pb2.INVALID_ARGUMENT
    body: dict[str, Any] = {"allowed": False, "reason": answer.reason}
    if answer.decision_id:
        body["decision_id"] = answer.decision_id
    if answer.detail:
        body["detail"] = answer.detail
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=code, message=answer.reason),
        denied_response=external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=answer.status), headers=headers, body=json.dumps(body)),
        dynamic_metadata=_metadata(answer, shadow))


def _let_through(answer: GateAnswer) -> external_auth_pb2.OkHttpResponse:
    values: Mapping[str, str] = {TENANT_HEADER: answer.tenant_id, SUBJECT_HEADER: answer.subject,
                                 SUBJECT_TENANT_HEADER: answer.subject_tenant_id,
                                 DECISION_ID_HEADER: answer.decision_id,
                                 SHADOW_HEADER: answer.reason if answer.status != 200 else ""}
    return external_auth_pb2.OkHttpResponse(
        headers=[_header(key, value) for key, value in values.items() if value],
        headers_to_remove=[key for key, value in values.items() if not value])


def _challenge(answer: GateAnswer) -> str:
    """WWW-Authenticate for a 401 (RFC 6750, section 3): no error code when no credentials were sent."""
    if not answer.token_given:
        return "Bearer"
    description = "the token has expired" if answer.reason == Reason.TOKEN_EXPIRED.name else "the token is invalid"
    return f'Bearer error="invalid_token", error_description="{description}"'
