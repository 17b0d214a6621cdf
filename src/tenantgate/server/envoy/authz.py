"""Envoy's external authorization (``envoy.service.auth.v3.Authorization/Check``) as a CheckAccess: an HTTP
request Envoy holds becomes an access request (``requests.http_access``), the decider decides it as it decides
every CheckAccess (same verifier and cache, decision log and metrics), and the decision becomes Envoy's answer:
upstream headers on allow, a 400 / 401 / 403 / 503 response on refusal. Nothing is decided here.

Caller input never becomes a gRPC error, which Envoy's ``failure_mode_allow`` could turn into an allow: a
malformed request is refused with 400, and one that needs a tenant this server cannot read with 503. Only a
server that cannot decide at all (no snapshot, or one staler than ``--max-staleness``) answers UNAVAILABLE, and
Envoy's failure mode decides."""

from __future__ import annotations

import grpc
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc

from tenantgate.engines.access import Reason, token_reason
from tenantgate.engines.tokens import TokenProblem
from tenantgate.errors import FailedPrecondition, InvalidArgument, Unavailable
from tenantgate.server.decider import Decider
from tenantgate.server.envoy.answers import CheckAnswers, GateAnswer
from tenantgate.server.envoy.requests import Refusal, http_access
from tenantgate.server.status import maps_errors

_TOKEN_REASONS = frozenset({Reason.TOKEN_INVALID, Reason.TOKEN_EXPIRED})


class AuthorizationServicer(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    def __init__(self, decider: Decider) -> None:
        self._decider = decider
        self._answers = CheckAnswers()

    @maps_errors
    async def Check(self, request: external_auth_pb2.CheckRequest,
                    context: grpc.aio.ServicerContext) -> external_auth_pb2.CheckResponse:
        attributes = request.attributes
        shadow = attributes.context_extensions.get("mode") == "shadow"
        try:
            answer = await self._answer(attributes)
        except InvalidArgument as error:
            answer = GateAnswer(400, "INVALID_REQUEST", detail=error.message)
        except FailedPrecondition as error:
            # A tenant this server cannot read: refused here with 503, not left to Envoy's failure mode, since
            # a forged token can name any tenant.
            answer = GateAnswer(503, "TENANT_UNAVAILABLE", detail=error.message)
        except Unavailable as error:  # no snapshot, or a stale one: Envoy's failure mode decides
            if not shadow:
                raise
            answer = GateAnswer(503, "UNAVAILABLE", detail=error.message)
        return self._answers.response(answer, shadow)

    async def _answer(self, attributes: attribute_context_pb2.AttributeContext) -> GateAnswer:
        snapshot = self._decider.snapshot()
        request = http_access(attributes, snapshot.tenants)
        if isinstance(request, Refusal):
            return GateAnswer(401, request.reason, detail=request.detail, token_given=request.token_given)
        token_given = bool(request.token)
        if not request.tenant_id:
            # The token names the tenant: the home tenant of a token that verifies.
            verified = await self._decider.verify_token(snapshot, request.token)
            if verified.token is None:
                if verified.problem is TokenProblem.TENANT_UNAVAILABLE:
                    raise FailedPrecondition(verified.detail)
                reason = token_reason(verified.problem)
                decision_id = self._decider.refuse(snapshot, request, reason)
                return GateAnswer(401, reason.name, decision_id=decision_id, revision=snapshot.revision,
                                  detail=verified.detail, token_given=True)
            # Decided for the subject it verified as: the decision needs no second verification of the token.
            request.tenant_id = request.subject_tenant_id = verified.token.tenant_id
            request.subject, request.token = verified.token.subject, ""
        needed = self._decider.to_compile(snapshot, request)
        if needed:
            await self._decider.compile(needed)
        decision, decision_id = self._decider.decide(snapshot, request)
        status = 200 if decision.allowed else 401 if decision.reason in _TOKEN_REASONS else 403
        # A tenant that does not exist is not named to the upstream, even on a shadow route.
        tenant_id = "" if decision.reason is Reason.TENANT_NOT_FOUND else request.tenant_id
        return GateAnswer(status, decision.reason.name, tenant_id, decision.subject,
                          decision.subject_tenant_id, decision_id, decision.rule, snapshot.revision,
                          token_given=token_given)
