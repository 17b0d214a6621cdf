"""What both clients share beyond the calls themselves: the configuration, the channel plan, the caller
metadata, and the revision this client must read at (read-your-writes)."""

from __future__ import annotations

import inspect
import threading
import typing
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc

from tenantgate.client._calls import Call
from tenantgate.client._channels import ChannelPlan, plan_channel
from tenantgate.client._config import ClientConfig
from tenantgate.client._errors import Unauthenticated
from tenantgate.client._results import Reason, SubjectTenants, TenantAccess
from tenantgate.identity import CALLER_METADATA

T = TypeVar("T")


class ClientBase:
    """State and call preparation common to ``Client`` and ``AsyncClient``; each adds its transport."""

    def __init__(self, config: str | Sequence[str] | ClientConfig, plan: ChannelPlan | None = None) -> None:
        self._config = as_config(config)
        # ``plan``: the channel plan already made for this config (names resolved, TLS files read).
        self._plan: ChannelPlan = plan or plan_channel(self._config)
        self._metadata = ((CALLER_METADATA, self._config.caller),) if self._config.caller else None
        self._min_revision = 0
        # The stub's keyword arguments of a call with the default deadline: one dict for all of them.
        self._default_options = {"timeout": self._config.timeout, "metadata": self._metadata,
                                 "wait_for_ready": self._config.wait_for_ready}
        self._lock = threading.Lock()  # observe_revision may be called from any thread

    @property
    def config(self) -> ClientConfig:
        return self._config

    @property
    def min_revision(self) -> int:
        """The highest registry revision this client was told about: the least it reads at."""
        return self._min_revision

    def observe_revision(self, revision: int) -> None:
        """Read your writes: after an apply (Admin API, ``tenantgate apply``) answered ``revision``, every
        later call through this client is answered from that revision or a later one.

        It is sent as ``min_revision`` on every call from now on, not only until one answer is that fresh:
        with several replicas, one that has caught up says nothing about the next. A server already there
        answers at once; one behind waits for its syncer, up to the call's deadline, then answers
        ``FailedPrecondition``. Lower revisions than one already observed change nothing."""
        if revision < 0:
            raise ValueError(f"a registry revision is not negative, got {revision}")
        with self._lock:
            self._min_revision = max(self._min_revision, revision)

    def _call_options(self, call: Call[Any]) -> dict[str, Any]:
        """The stub's keyword arguments for ``call``, its request raised to the observed revision."""
        least = max(call.min_revision, self._min_revision)
        if least:
            call.request.min_revision = least
        if call.timeout is None:
            return self._default_options
        return {**self._default_options, "timeout": call.timeout}


def every_tenant_of(page: SubjectTenants) -> tuple[TenantAccess, ...]:
    """The tenants of one page of a listing walked page after page, where a token that does not verify is an error
    (a single page answers it as a reason)."""
    if page.reason in (Reason.TOKEN_INVALID, Reason.TOKEN_EXPIRED):
        raise Unauthenticated(grpc.StatusCode.UNAUTHENTICATED, f"{page.reason.value}: {page.detail}")
    return page.tenants


def as_config(config: str | Sequence[str] | ClientConfig) -> ClientConfig:
    return config if isinstance(config, ClientConfig) else ClientConfig(config)


def describe_method(method: Callable[..., Any], build: Callable[..., Call[Any]], owner: str) -> None:
    """Give ``method``, which runs the calls ``build`` makes, ``build``'s name, docstring and signature
    (``self`` first, answering what the call reads), for help() and documentation tools."""
    signature = inspect.signature(build)
    answer = typing.get_args(typing.get_type_hints(build)["return"])[0]
    method.__name__ = build.__name__
    method.__qualname__ = f"{owner}.{build.__name__}"
    method.__doc__ = build.__doc__
    method.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY), *signature.parameters.values()],
        return_annotation=answer)
