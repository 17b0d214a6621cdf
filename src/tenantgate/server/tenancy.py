"""ListSubjectTenants and CheckTenantAccess: protobuf in, the tenancy engine against one snapshot, protobuf out.

Each call reads one snapshot (its grant index and tenants are of one revision), verifies a token with the
verifier and cache CheckAccess uses, and compiles the tenants it needs in a worker thread, never on the event
loop. A listing is answered on the loop only when the page can examine at most INLINE_TENANTS candidates (about
3 µs each, engine and protobuf); otherwise in a worker thread, so that no call holds the loop for a millisecond or
more. What bounds a page's work is the candidates it examines, not its page_size: a page stops at page_size tenants
listed, but candidates left out (an environment they do not declare, inactive states) do not count towards it, so a
page of 10 may examine up to MAX_EXAMINED of them (several milliseconds). The snapshot is immutable, and the
tenants it reads compiled are compiled before."""

from __future__ import annotations

import asyncio

from tenantgate.adminapi.wire import state_to_wire
from tenantgate.engines.access import Reason, Undecided, token_reason
from tenantgate.engines.tenancy import TenantAccess, check_tenant, examinable, list_tenants, to_compile
from tenantgate.engines.tokens import TokenProblem
from tenantgate.errors import FailedPrecondition, NotFound
from tenantgate.membership import HeldRole
from tenantgate.server import pages, requests
from tenantgate.server.answers import REASONS
from tenantgate.server.decider import Decider
from tenantgate.snapshot import Snapshot
from tenantgate.v1 import decision_pb2 as pb

INLINE_TENANTS = 100


def _roles(roles: tuple[HeldRole, ...]) -> list[pb.HeldRole]:
    return [pb.HeldRole(role=held.role, group=held.group, environments=sorted(held.environments or ()))
            for held in roles]


def _fill(answer: pb.SubjectTenant | pb.CheckTenantAccessResponse, access: TenantAccess) -> None:
    answer.allowed = access.allowed
    answer.reason = REASONS[access.reason]
    if access.state is not None:
        answer.state = state_to_wire(access.state)
    answer.roles.extend(_roles(access.roles))
    answer.grants.extend(access.grants)


class TenancyCalls:
    def __init__(self, decider: Decider) -> None:
        self._decider = decider

    async def _verified(self, snapshot: Snapshot, who: requests.Identity) -> tuple[str, str] | tuple[Reason, str]:
        """(home tenant, subject) of ``who``; for a token that does not verify, (its reason, why)."""
        if not who.token:
            return who.home, who.subject
        result = await self._decider.verify_token(snapshot, who.token, who.home)
        if result.problem is TokenProblem.TENANT_UNAVAILABLE:
            raise FailedPrecondition(result.detail)
        if result.token is None:
            return token_reason(result.problem), result.detail
        return result.token.tenant_id, result.token.subject

    async def list_subject_tenants(self, request: pb.ListSubjectTenantsRequest,
                                   snapshot: Snapshot) -> pb.ListSubjectTenantsResponse:
        who = requests.identity(request, snapshot.tenants)
        limit = requests.page_size(request.page_size)
        verified = await self._verified(snapshot, who)
        if isinstance(verified[0], Reason):
            return pb.ListSubjectTenantsResponse(reason=REASONS[verified[0]], detail=verified[1],
                                                 revision=snapshot.revision)
        home, subject = verified
        if home not in snapshot.tenants:
            raise NotFound(f"unknown tenant {home!r}", field="subject_tenant_id")
        question = (home, subject, who.environment, "inactive" if request.include_inactive else "")
        after = pages.resume_after(request.page_token, *question)
        needed = to_compile(snapshot, home)
        if needed:
            await self._decider.compile(needed)

        def answer() -> pb.ListSubjectTenantsResponse:
            page = list_tenants(snapshot, home, subject, who.environment, after=after, limit=limit,
                                include_inactive=request.include_inactive)
            if isinstance(page, Undecided):
                raise FailedPrecondition(page.problem)
            response = pb.ListSubjectTenantsResponse(reason=pb.DECISION_REASON_ALLOWED, subject=subject,
                                                     subject_tenant_id=home, revision=snapshot.revision,
                                                     next_page_token=pages.page_token(page.resume_after, *question))
            for access in page.tenants:
                _fill(response.tenants.add(tenant_id=access.tenant_id), access)
            return response

        if examinable(snapshot, home, subject, after) > INLINE_TENANTS:
            return await asyncio.to_thread(answer)
        return answer()

    async def check_tenant_access(self, request: pb.CheckTenantAccessRequest,
                                  snapshot: Snapshot) -> pb.CheckTenantAccessResponse:
        tenant_id = requests.tenant_id(request.tenant_id, known_tenants=snapshot.tenants)
        who = requests.identity(request, snapshot.tenants, default_home="" if request.token else tenant_id)
        if tenant_id not in snapshot.tenants:  # as CheckAccess: before the token is looked at
            return pb.CheckTenantAccessResponse(reason=pb.DECISION_REASON_TENANT_NOT_FOUND, subject=who.subject,
                                                subject_tenant_id=who.home, revision=snapshot.revision)
        verified = await self._verified(snapshot, who)
        if isinstance(verified[0], Reason):
            return pb.CheckTenantAccessResponse(reason=REASONS[verified[0]], revision=snapshot.revision)
        home, subject = verified
        needed = to_compile(snapshot, tenant_id)
        if needed:
            await self._decider.compile(needed)
        access = check_tenant(snapshot, tenant_id, home, subject, who.environment)
        if isinstance(access, Undecided):
            raise FailedPrecondition(access.problem)
        response = pb.CheckTenantAccessResponse(subject=subject, subject_tenant_id=home, revision=snapshot.revision)
        _fill(response, access)
        return response
