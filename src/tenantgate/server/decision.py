"""DecisionService: protobuf in, engine call against one snapshot, protobuf out."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar, cast

import grpc

from tenantgate.adminapi.wire import state_to_wire, timestamp
from tenantgate.bounds import MAX_TOKEN_BYTES
from tenantgate.engines.access import Decision, Principal, Ruling, Undecided, token_reason
from tenantgate.engines.keys import KeyEngine
from tenantgate.engines.tokens import TokenProblem
from tenantgate.errors import FailedPrecondition, InvalidArgument, NotFound, TenantgateError
from tenantgate.model import KeyState, TenantState
from tenantgate.server import requests
from tenantgate.server.answers import REASONS, Answered, EncodedAnswers
from tenantgate.server.decider import Decider
from tenantgate.server.identity import CallerIdentity
from tenantgate.server.status import maps_errors, status_code
from tenantgate.server.tenancy import TenancyCalls
from tenantgate.snapshot import KeyVersion, Snapshot
from tenantgate.v1 import decision_pb2 as pb
from tenantgate.v1 import decision_pb2_grpc
from tenantgate.wiretime import set_seconds

T = TypeVar("T")
KeyRequest = pb.GetTenantKeyRequest | pb.GetTenantKeyMetadataRequest | pb.GetDataKeyRequest | pb.DecryptDataKeyRequest
key_log = logging.getLogger("tenantgate.keys")
# How long a min_revision waits for the snapshot when the call has no deadline.
DEFAULT_REVISION_WAIT = 5.0
_KEY_STATES = {state: cast(pb.KeyState, pb.KeyState.Value(f"KEY_STATE_{state.name}")) for state in KeyState}


def _set_error(target: pb.CheckError, error: TenantgateError) -> None:
    """A check of a batch that could not be decided: its status, as the call would have had alone."""
    target.code = status_code(error).value[0]
    target.message = error.message
    target.field = error.field


class KeyAnswers:
    """GetTenantKey responses, built once per key version and snapshot revision: the response depends on
    the key version alone, and building it was a third of the call's time in the handler."""

    MAX_ANSWERS = 10_000

    def __init__(self) -> None:
        self._revision = -1
        # id(key) -> (key, response); holding the key keeps its id from being reused while it is cached.
        self._answers: dict[int, tuple[KeyVersion, pb.GetTenantKeyResponse]] = {}

    def answer(self, revision: int, key: KeyVersion) -> pb.GetTenantKeyResponse:
        if revision != self._revision or len(self._answers) >= self.MAX_ANSWERS:
            # A new revision may have destroyed keys: drop every response holding old material.
            self._answers, self._revision = {}, revision
        cached = self._answers.get(id(key))
        if cached is not None and cached[0] is key:
            return cached[1]
        response = pb.GetTenantKeyResponse(key_id=key.key_id, version=key.version, algorithm=key.algorithm,
                                           material=key.material, state=_KEY_STATES[key.state],
                                           created_at=timestamp(key.created_at))
        self._answers[id(key)] = (key, response)
        return response


class DecisionServicer(decision_pb2_grpc.DecisionServiceServicer):  # type: ignore[misc]
    # The methods that answer their response serialized: served without a serializer (handlers.service_handler).
    SERIALIZED_ANSWERS = frozenset({"CheckAccess"})

    def __init__(self, decider: Decider, keys: KeyEngine, identity: CallerIdentity) -> None:
        self._decider = decider
        self._identity = identity
        self._keys = keys
        self._key_answers = KeyAnswers()
        self._encoded = EncodedAnswers()
        self._tenancy = TenancyCalls(decider)

    async def _snapshot_at(self, min_revision: int, context: grpc.aio.ServicerContext) -> Snapshot:
        """A snapshot at ``min_revision`` or later, waiting for the syncer until just before the deadline."""
        remaining = context.time_remaining()
        # Answer a little before the caller's deadline, so it gets FAILED_PRECONDITION, not a timeout.
        wait = DEFAULT_REVISION_WAIT if remaining is None else max(0.0, remaining - max(0.05, remaining / 20))
        return await self._decider.snapshot_at(min_revision, wait)

    async def _snapshot_of(self, min_revision: int, context: grpc.aio.ServicerContext) -> Snapshot:
        """The current snapshot, or one at ``min_revision`` when the current one is older."""
        snapshot = self._decider.snapshot()
        return await self._snapshot_at(min_revision, context) if min_revision > snapshot.revision else snapshot

    @maps_errors
    async def CheckAccess(self, request: pb.CheckAccessRequest, context: grpc.aio.ServicerContext) -> bytes:
        """Answers the response serialized (``EncodedAnswers``): the method is served without a serializer."""
        snapshot = self._decider.snapshot()
        if request.min_revision > snapshot.revision:
            snapshot = await self._snapshot_at(request.min_revision, context)
        principal, action, resource = requests.read_check(request, snapshot.tenants)
        decision = self._decider.ruling(snapshot, principal).decide(action, resource)
        if isinstance(decision, Undecided):
            decision = await self._decide_compiled(snapshot, principal, action, resource)
        decision_id = self._decider.record(snapshot, principal[0], action, resource, principal[4], decision)
        return self._encoded.encode(snapshot.revision, decision, decision_id)

    async def _decide_compiled(self, snapshot: Snapshot, principal: Principal, action: str,
                               resource: str) -> Decision:
        """The decision once the tenants it needs are compiled (off the event loop); FailedPrecondition if it
        still cannot be made."""
        decision = (await self._rulings(snapshot, [principal]))[0].decide(action, resource)
        if isinstance(decision, Undecided):
            raise FailedPrecondition(decision.problem)
        return decision

    @maps_errors
    async def CheckAccessBatch(self, request: pb.CheckAccessBatchRequest,
                               context: grpc.aio.ServicerContext) -> pb.CheckAccessBatchResponse:
        items = request.items
        if len(items) > requests.MAX_BATCH:
            raise InvalidArgument(f"a batch holds at most {requests.MAX_BATCH} checks, got {len(items)}",
                                  field="items")
        snapshot = await self._snapshot_of(request.min_revision, context)
        checks, principals = requests.parse_checks(items, snapshot.tenants)
        rulings = await self._rulings(snapshot, principals)
        response = pb.CheckAccessBatchResponse(revision=snapshot.revision)
        add, decider, revision = response.results.add, self._decider, snapshot.revision
        logs = decider.logs_decisions
        answered: dict[int, Answered] = {}
        for (correlation_id, who, action, resource), decision_id in zip(
                checks, decider.decision_ids(len(checks)), strict=True):
            result = add()
            if correlation_id:
                result.correlation_id = correlation_id
            if not isinstance(who, int):
                _set_error(result.error, who)
                continue
            decision = rulings[who].decide(action, resource)
            if isinstance(decision, Undecided):
                _set_error(result.error, FailedPrecondition(decision.problem))
                continue
            known = answered.get(id(decision))
            if known is None:
                known = answered[id(decision)] = Answered(decision, principals[who][0], revision)
            known.times += 1
            answer = result.decision
            answer.CopyFrom(known.answer)
            answer.decision_id = decision_id
            if logs:
                principal = principals[who]
                decider.log(snapshot, decision_id, principal[0], action, resource, principal[4], decision)
        for known in answered.values():
            decider.count(snapshot, known.tenant_id, known.decision.reason, known.times)
        return response

    async def _rulings(self, snapshot: Snapshot, principals: list[Principal]) -> list[Ruling]:
        """A ruling for each principal, the tenants they need compiled first, together, in one worker thread."""
        needed = [view for principal in principals for view in self._decider.principal_to_compile(snapshot, principal)]
        if needed:
            await self._decider.compile(needed)
        return [self._decider.ruling(snapshot, principal) for principal in principals]

    @maps_errors
    async def ConsumeQuota(self, request: pb.ConsumeQuotaRequest,
                           context: grpc.aio.ServicerContext) -> pb.ConsumeQuotaResponse:
        snapshot = self._decider.snapshot()
        if request.min_revision > snapshot.revision:
            snapshot = await self._snapshot_at(request.min_revision, context)
        tenant_id = requests.tenant_id(request.tenant_id, known_tenants=snapshot.tenants)
        outcome = await self._decider.consume(snapshot, tenant_id, requests.quota_items(request),
                                              release=request.release, idempotency_key=request.idempotency_key)
        response = pb.ConsumeQuotaResponse(allowed=outcome.allowed, revision=outcome.revision)
        for item in outcome.items:
            result = response.results.add(quota=item.quota, allowed=item.allowed, limit=item.limit,
                                          remaining=item.remaining)
            # Fields left at zero are left unset: they read the same, and each one set costs (a duration, a
            # sub-message).
            if item.lease_id:
                result.lease_id = item.lease_id
            if item.shadow:
                result.shadow = True
            if item.reset_after:
                set_seconds(result.reset_after, item.reset_after)
            if item.retry_after:
                set_seconds(result.retry_after, item.retry_after)
        return response

    async def _key_call(self, operation: str, request: KeyRequest, context: grpc.aio.ServicerContext,
                        read: Callable[[Snapshot, str, str, str], T]) -> T:
        """A key read (snapshot, caller, tenant, purpose), logged allowed or not: who asked for which key
        and what they got, never the material."""
        snapshot = await self._snapshot_of(request.min_revision, context)
        tenant_id = requests.tenant_id(request.tenant_id, known_tenants=snapshot.tenants)
        purpose = requests.require_text(request.purpose, "purpose", requests.MAX_ID)
        caller = self._identity.of(context)
        await self._decider.compile_tenant(snapshot, tenant_id)
        outcome = "OK"
        try:
            return read(snapshot, caller, tenant_id, purpose)
        except TenantgateError as error:
            outcome = error.code
            raise
        finally:
            if key_log.isEnabledFor(logging.INFO):  # the extra dict is built only for a log that is kept
                key_log.info("key access op=%s tenant=%s purpose=%s caller=%s outcome=%s", operation, tenant_id,
                             purpose, caller or "-", outcome,
                             extra={"event": "key_access", "op": operation, "tenant_id": tenant_id,
                                    "purpose": purpose, "caller": caller, "outcome": outcome})

    @maps_errors
    async def GetTenantKey(self, request: pb.GetTenantKeyRequest,
                           context: grpc.aio.ServicerContext) -> pb.GetTenantKeyResponse:
        return await self._key_call("GetTenantKey", request, context, lambda snapshot, caller, tenant, purpose:
                                    self._key_answers.answer(snapshot.revision, self._keys.get(
                                        snapshot, caller, tenant, purpose, request.version)))

    @maps_errors
    async def GetTenantKeyMetadata(self, request: pb.GetTenantKeyMetadataRequest,
                                   context: grpc.aio.ServicerContext) -> pb.GetTenantKeyMetadataResponse:
        found = await self._key_call("GetTenantKeyMetadata", request, context, self._keys.metadata)
        return pb.GetTenantKeyMetadataResponse(
            primary_version=found.primary_version, min_decryption_version=found.min_decryption_version,
            versions=[pb.KeyVersionInfo(key_id=k.key_id, version=k.version, algorithm=k.algorithm,
                                        state=_KEY_STATES[k.state], created_at=timestamp(k.created_at))
                      for k in found.versions])

    @maps_errors
    async def GetDataKey(self, request: pb.GetDataKeyRequest,
                         context: grpc.aio.ServicerContext) -> pb.GetDataKeyResponse:
        data_key = await self._key_call("GetDataKey", request, context, self._keys.new_data_key)
        return pb.GetDataKeyResponse(key_id=data_key.key.key_id, version=data_key.key.version,
                                     plaintext=data_key.plaintext, wrapped=data_key.wrapped)

    @maps_errors
    async def DecryptDataKey(self, request: pb.DecryptDataKeyRequest,
                             context: grpc.aio.ServicerContext) -> pb.DecryptDataKeyResponse:
        if len(request.wrapped) > 1024:
            raise InvalidArgument("wrapped is longer than any data key", field="wrapped")
        data_key = await self._key_call("DecryptDataKey", request, context, lambda snapshot, caller, tenant, purpose:
                                        self._keys.decrypt_data_key(snapshot, caller, tenant, purpose, request.wrapped))
        return pb.DecryptDataKeyResponse(key_id=data_key.key.key_id, version=data_key.key.version,
                                         plaintext=data_key.plaintext)

    @maps_errors
    async def ValidateToken(self, request: pb.ValidateTokenRequest,
                            context: grpc.aio.ServicerContext) -> pb.ValidateTokenResponse:
        snapshot = await self._snapshot_of(request.min_revision, context)
        token = requests.require_text(request.token, "token", MAX_TOKEN_BYTES)
        home_tenant_id = requests.tenant_id(request.tenant_id, required=False)
        result = await self._decider.verify_token(snapshot, token, home_tenant_id)
        if result.problem is TokenProblem.TENANT_UNAVAILABLE:
            raise FailedPrecondition(result.detail)
        if result.token is None:
            return pb.ValidateTokenResponse(valid=False, reason=REASONS[token_reason(result.problem)],
                                            detail=result.detail)
        verified = result.token
        tenant = snapshot.tenants[verified.tenant_id]
        if tenant.state is not TenantState.ACTIVE:
            return pb.ValidateTokenResponse(valid=False, reason=pb.DECISION_REASON_TENANT_NOT_ACTIVE,
                                            tenant_id=verified.tenant_id, subject=verified.subject,
                                            detail=f"tenant {verified.tenant_id!r} is {tenant.state.value}")
        return pb.ValidateTokenResponse(valid=True, reason=pb.DECISION_REASON_ALLOWED, tenant_id=verified.tenant_id,
                                        subject=verified.subject, scopes=verified.scopes,
                                        expires_at=timestamp(verified.expires_at))

    @maps_errors
    async def ResolveTenant(self, request: pb.ResolveTenantRequest,
                            context: grpc.aio.ServicerContext) -> pb.ResolveTenantResponse:
        snapshot = await self._snapshot_of(request.min_revision, context)
        tenant_id = requests.tenant_id(request.tenant_id)
        tenant = snapshot.tenants.get(tenant_id)
        if tenant is None:
            raise NotFound(f"unknown tenant {tenant_id!r}", field="tenant_id")
        await self._decider.compile_tenant(snapshot, tenant_id)
        spec = tenant.spec
        return pb.ResolveTenantResponse(
            tenant_id=spec.id, name=spec.name, state=state_to_wire(spec.state), plan=spec.plan,
            profile=spec.profile, isolation=spec.isolation, environments=spec.environments,
            features=spec.features, labels=dict(spec.labels), revision=snapshot.revision, stale=snapshot.stale)

    @maps_errors
    async def ListSubjectTenants(self, request: pb.ListSubjectTenantsRequest,
                                 context: grpc.aio.ServicerContext) -> pb.ListSubjectTenantsResponse:
        snapshot = await self._snapshot_of(request.min_revision, context)
        return await self._tenancy.list_subject_tenants(request, snapshot)

    @maps_errors
    async def CheckTenantAccess(self, request: pb.CheckTenantAccessRequest,
                                context: grpc.aio.ServicerContext) -> pb.CheckTenantAccessResponse:
        snapshot = await self._snapshot_of(request.min_revision, context)
        return await self._tenancy.check_tenant_access(request, snapshot)
