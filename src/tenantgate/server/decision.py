"""DecisionService: protobuf in, engine call against one snapshot, protobuf out."""

from __future__ import annotations

import itertools
import logging
import secrets
from collections.abc import Callable
from typing import Any, TypeVar, cast

import grpc
from google.protobuf.duration_pb2 import Duration

from tenantgate import metrics
from tenantgate.clock import Clock, SystemClock
from tenantgate.engines.access import AccessEngine, AccessRequest, Reason, Undecided
from tenantgate.engines.keys import KeyEngine
from tenantgate.engines.quota import ConsumeOutcome, QuotaEngine
from tenantgate.engines.tokens import MAX_TOKEN_BYTES, TokenProblem, TokenVerifier
from tenantgate.errors import FailedPrecondition, InvalidArgument, NotFound, TenantgateError, Unavailable
from tenantgate.model import KeyState, TenantState
from tenantgate.registry.wire import state_to_wire, timestamp
from tenantgate.server import requests
from tenantgate.server.decisionlog import DecisionLog
from tenantgate.server.identity import CallerIdentity
from tenantgate.server.status import maps_errors, status_code
from tenantgate.snapshot import KeyVersion, Snapshot, SnapshotHolder, TenantView
from tenantgate.v1 import decision_pb2 as pb
from tenantgate.v1 import decision_pb2_grpc

T = TypeVar("T")
KeyRequest = pb.GetTenantKeyRequest | pb.GetTenantKeyMetadataRequest | pb.GetDataKeyRequest | pb.DecryptDataKeyRequest
key_log = logging.getLogger("tenantgate.keys")
# How long a min_revision waits for the snapshot when the call has no deadline.
DEFAULT_REVISION_WAIT = 5.0
# Engine enums to protocol enums, by name; a missing name fails at import, not on a request.
_REASONS = {reason: cast(pb.DecisionReason, pb.DecisionReason.Value(f"DECISION_REASON_{reason.name}"))
            for reason in Reason}
_KEY_STATES = {state: cast(pb.KeyState, pb.KeyState.Value(f"KEY_STATE_{state.name}")) for state in KeyState}


class DecisionIds:
    """Unique without coordination: a random per-process prefix and a counter."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}-{next(self._counter):x}"


def _set_error(target: pb.CheckError, error: TenantgateError) -> None:
    """A check of a batch that could not be decided: its status, as the call would have had alone."""
    target.code = status_code(error).value[0]
    target.message = error.message
    target.field = error.field


def _set_duration(target: Duration, seconds: float) -> None:
    whole = int(seconds)
    target.seconds = whole
    target.nanos = int((seconds - whole) * 1e9)


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


class QuotaMetering:
    """Consumed and denied units per tenant and quota, with each series' counter looked up once."""

    def __init__(self) -> None:
        self._counters: dict[tuple[str, str], tuple[Any, Any]] = {}

    def record(self, tenant_id: str, outcome: ConsumeOutcome, *, release: bool) -> None:
        if outcome.degraded:
            metrics.QUOTA_BACKEND_ERRORS.inc()
        for item in outcome.items:
            counters = self._counters.get((tenant_id, item.quota))
            if counters is None:
                label = metrics.tenant_label(tenant_id)
                counters = (metrics.QUOTA_CONSUMED.labels(label, item.quota),
                            metrics.QUOTA_DENIED.labels(label, item.quota))
                if len(self._counters) < 100_000:
                    self._counters[(tenant_id, item.quota)] = counters
            if item.allowed and outcome.allowed and not release:
                counters[0].inc(item.amount)
            elif not item.allowed:
                counters[1].inc(item.amount)


class DecisionServicer(decision_pb2_grpc.DecisionServiceServicer):  # type: ignore[misc]
    def __init__(self, holder: SnapshotHolder, tokens: TokenVerifier, access: AccessEngine, quota: QuotaEngine,
                 keys: KeyEngine, identity: CallerIdentity, *, max_staleness: float = 0.0,
                 clock: Clock | None = None, decision_log: DecisionLog | None = None) -> None:
        self._decision_log = decision_log
        self._decision_counters: dict[tuple[str, Reason], Any] = {}
        self._metering = QuotaMetering()
        self._identity = identity
        self._holder = holder
        self._max_staleness = max_staleness
        self._clock = clock or SystemClock()
        self._tokens = tokens
        self._access = access
        self._quota = quota
        self._keys = keys
        self._ids = DecisionIds()
        self._key_answers = KeyAnswers()

    def _snapshot(self) -> Snapshot:
        """The snapshot to answer from, unless there is none yet or it is older than the max staleness."""
        snapshot = self._holder.current
        if snapshot is None:
            raise Unavailable("no snapshot of the registry is loaded yet")
        if self._max_staleness and self._clock.now() - self._holder.confirmed_at > self._max_staleness:
            raise Unavailable(f"the registry was last read {self._clock.now() - self._holder.confirmed_at:.0f} s ago, "
                              f"longer than the configured max staleness ({self._max_staleness:g} s); failing closed")
        return snapshot

    async def _snapshot_at(self, min_revision: int, context: grpc.aio.ServicerContext) -> Snapshot:
        """A snapshot at ``min_revision`` or later, waiting for the syncer until just before the deadline."""
        remaining = context.time_remaining()
        # Answer a little before the caller's deadline, so it gets FAILED_PRECONDITION, not a timeout.
        wait = DEFAULT_REVISION_WAIT if remaining is None else max(0.0, remaining - max(0.05, remaining / 20))
        waited = await self._holder.wait_for_revision(min_revision, wait)
        if waited is None:
            current = self._holder.current.revision if self._holder.current else 0
            raise FailedPrecondition(f"the snapshot is at revision {current}, older than min_revision {min_revision}",
                                     field="min_revision")
        return self._snapshot()

    def _decide(self, snapshot: Snapshot, access_request: AccessRequest, answer: pb.CheckAccessResponse) -> None:
        """Decide ``access_request`` and write the answer into ``answer`` (a batch fills its results in place)."""
        decision = self._access.check(snapshot, access_request)
        if isinstance(decision, Undecided):
            raise FailedPrecondition(decision.problem)
        decision_id = self._ids.next()
        if self._decision_log is not None:
            self._decision_log.record(decision_id, access_request, decision, snapshot.revision)
        counter = self._decision_counters.get((access_request.tenant_id, decision.reason))
        if counter is None:
            # Unknown tenant ids share one label: callers must not be able to mint series.
            label = ("_unknown" if decision.reason is Reason.TENANT_NOT_FOUND
                     else metrics.tenant_label(access_request.tenant_id))
            counter = metrics.DECISIONS.labels(label, decision.reason.name)
            if len(self._decision_counters) < 100_000:
                self._decision_counters[(access_request.tenant_id, decision.reason)] = counter
        counter.inc()
        answer.allowed = decision.allowed
        answer.reason = _REASONS[decision.reason]
        answer.rule = decision.rule
        answer.revision = snapshot.revision
        answer.decision_id = decision_id

    @maps_errors
    async def CheckAccess(self, request: pb.CheckAccessRequest,
                          context: grpc.aio.ServicerContext) -> pb.CheckAccessResponse:
        snapshot = self._snapshot()
        if request.min_revision > snapshot.revision:
            snapshot = await self._snapshot_at(request.min_revision, context)
        access_request = requests.access_request(request, snapshot.tenants)
        tenant = snapshot.tenants.get(access_request.tenant_id)
        if (tenant is not None and tenant.built is None) or access_request.token:
            needed = self._access.tenants_to_compile(snapshot, access_request)
            if needed:
                await self._holder.compile(needed)
        answer = pb.CheckAccessResponse()
        self._decide(snapshot, access_request, answer)
        return answer

    @maps_errors
    async def CheckAccessBatch(self, request: pb.CheckAccessBatchRequest,
                               context: grpc.aio.ServicerContext) -> pb.CheckAccessBatchResponse:
        if len(request.items) > requests.MAX_BATCH:
            raise InvalidArgument(f"a batch holds at most {requests.MAX_BATCH} checks, got {len(request.items)}",
                                  field="items")
        snapshot = self._snapshot()
        if request.min_revision > snapshot.revision:
            snapshot = await self._snapshot_at(request.min_revision, context)
        checks: list[AccessRequest | TenantgateError] = []
        needed: list[TenantView] = []
        for index, item in enumerate(request.items):
            try:
                access_request = requests.access_request(item.check, snapshot.tenants, index)
            except TenantgateError as error:
                checks.append(error)
                continue
            checks.append(access_request)
            tenant = snapshot.tenants.get(access_request.tenant_id)
            if (tenant is not None and tenant.built is None) or access_request.token:
                needed += self._access.tenants_to_compile(snapshot, access_request)
        if needed:
            await self._holder.compile(needed)  # every tenant the batch needs, in one worker thread
        response = pb.CheckAccessBatchResponse(revision=snapshot.revision)
        for item, check in zip(request.items, checks, strict=True):
            result = response.results.add()
            result.correlation_id = item.correlation_id
            if isinstance(check, TenantgateError):
                _set_error(result.error, check)
                continue
            try:
                self._decide(snapshot, check, result.decision)
            except TenantgateError as error:
                _set_error(result.error, error)
        return response

    @maps_errors
    async def ConsumeQuota(self, request: pb.ConsumeQuotaRequest,
                           context: grpc.aio.ServicerContext) -> pb.ConsumeQuotaResponse:
        snapshot = self._snapshot()
        tenant_id = requests.tenant_id(request.tenant_id, known_tenants=snapshot.tenants)
        tenant = snapshot.tenants.get(tenant_id)
        if tenant is not None and tenant.built is None:
            await self._holder.compile((tenant,))
        outcome = await self._quota.consume(snapshot, tenant_id, requests.quota_items(request),
                                            release=request.release, idempotency_key=request.idempotency_key)
        self._metering.record(tenant_id, outcome, release=request.release)
        response = pb.ConsumeQuotaResponse(allowed=outcome.allowed, revision=outcome.revision)
        for item in outcome.items:
            result = response.results.add(quota=item.quota, allowed=item.allowed, limit=item.limit,
                                          remaining=item.remaining, lease_id=item.lease_id, shadow=item.shadow)
            # A zero duration is left unset: it reads as zero, and each one set costs a sub-message.
            if item.reset_after:
                _set_duration(result.reset_after, item.reset_after)
            if item.retry_after:
                _set_duration(result.retry_after, item.retry_after)
        return response

    async def _key_call(self, operation: str, request: KeyRequest, context: grpc.aio.ServicerContext,
                        read: Callable[[Snapshot, str, str, str], T]) -> T:
        """A key read (snapshot, caller, tenant, purpose), logged allowed or not: who asked for which key
        and what they got, never the material."""
        snapshot = self._snapshot()
        tenant_id = requests.tenant_id(request.tenant_id, known_tenants=snapshot.tenants)
        purpose = requests.require_text(request.purpose, "purpose", requests.MAX_ID)
        caller = self._identity.of(context)
        tenant = snapshot.tenants.get(tenant_id)
        if tenant is not None and tenant.built is None:
            await self._holder.compile((tenant,))
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
        snapshot = self._snapshot()
        token = requests.require_text(request.token, "token", MAX_TOKEN_BYTES)
        home_tenant_id = requests.tenant_id(request.tenant_id, required=False)
        needed = self._tokens.tenants_to_compile(snapshot, token, home_tenant_id)
        if needed:
            await self._holder.compile(needed)
        result = self._tokens.verify(snapshot, token, home_tenant_id)
        if result.problem is TokenProblem.TENANT_UNAVAILABLE:
            raise FailedPrecondition(result.detail)
        if result.token is None:
            reason = pb.DECISION_REASON_TOKEN_EXPIRED if result.problem is TokenProblem.EXPIRED \
                else pb.DECISION_REASON_TOKEN_INVALID
            return pb.ValidateTokenResponse(valid=False, reason=reason, detail=result.detail)
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
        snapshot = self._snapshot()
        tenant_id = requests.tenant_id(request.tenant_id)
        tenant = snapshot.tenants.get(tenant_id)
        if tenant is None:
            raise NotFound(f"unknown tenant {tenant_id!r}", field="tenant_id")
        if tenant.built is None:
            await self._holder.compile((tenant,))
        spec = tenant.spec
        return pb.ResolveTenantResponse(
            tenant_id=spec.id, name=spec.name, state=state_to_wire(spec.state), plan=spec.plan,
            profile=spec.profile, isolation=spec.isolation, environments=spec.environments,
            features=spec.features, labels=dict(spec.labels), revision=snapshot.revision, stale=snapshot.stale)
