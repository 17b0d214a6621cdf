"""Tenants are compiled in worker threads, each once however many calls wait for it."""

from __future__ import annotations

import asyncio
import threading

from tenantgate.errors import FailedPrecondition
from tenantgate.model import TenantState
from tenantgate.registry.manifest import parse_document
from tenantgate.snapshot import CompiledTenant, SnapshotHolder, TenantView, compile_tenant
from tests.conftest import tenant_doc


class Loads:
    """A tenant's compilation that records the thread it ran on and can be held until released."""

    def __init__(self, tenant_id: str, *, fails: bool = False) -> None:
        self.spec = parse_document(tenant_doc(tenant_id)).tenant
        self.fails = fails
        self.threads: list[int] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def __call__(self) -> CompiledTenant:
        self.threads.append(threading.get_ident())
        self.started.set()
        assert self.release.wait(10)
        if self.fails:
            raise FailedPrecondition(f"tenant {self.spec.id!r} cannot be loaded")
        return compile_tenant(self.spec)

    def view(self) -> TenantView:
        return TenantView(self.spec.id, 1, TenantState.ACTIVE, (), self)


async def test_tenants_compile_in_a_worker_thread_once_for_all_callers() -> None:
    holder = SnapshotHolder()
    acme, globex = Loads("acme"), Loads("globex")
    acme.release.clear()
    views = acme.view(), globex.view()
    first = asyncio.create_task(holder.compile(views))
    assert await asyncio.to_thread(acme.started.wait, 10)  # the first compilation has begun, and is held
    waiting = [asyncio.create_task(holder.compile([views[0]])) for _ in range(5)]
    for _ in range(10):
        await asyncio.sleep(0)  # let every task run up to its wait
    assert not first.done() and not any(task.done() for task in waiting)
    acme.release.set()
    await asyncio.wait_for(asyncio.gather(first, *waiting), 10)
    assert views[0].built is not None and views[1].built is not None
    # Once each, in one worker thread: never on the event loop's.
    assert acme.threads == globex.threads and len(acme.threads) == 1
    assert acme.threads[0] != threading.get_ident()
    await holder.compile(views)  # compiled already: nothing to do
    assert len(acme.threads) == 1


async def test_a_caller_that_gives_up_leaves_the_compilation_to_the_others() -> None:
    holder = SnapshotHolder()
    acme = Loads("acme")
    acme.release.clear()
    view = acme.view()
    impatient = asyncio.create_task(holder.compile([view]))
    assert await asyncio.to_thread(acme.started.wait, 10)
    patient = asyncio.create_task(holder.compile([view]))
    for _ in range(10):
        await asyncio.sleep(0)  # both wait for the one compilation
    impatient.cancel()
    acme.release.set()
    await asyncio.wait_for(patient, 10)
    assert impatient.cancelled() and view.built is not None and len(acme.threads) == 1


async def test_a_tenant_that_cannot_compile_is_tried_once_and_says_why() -> None:
    holder = SnapshotHolder()
    broken = Loads("globex", fails=True)
    view = broken.view()
    await holder.compile([view])
    await holder.compile([view])
    assert view.built is None and view.problem == "tenant 'globex' cannot be loaded"
    assert view.compile() is None and len(broken.threads) == 1
