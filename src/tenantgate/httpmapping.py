"""How an HTTP request names an access check: its method gives the action, its path the resource, its
Authorization header the bearer token. One mapping, so that every HTTP front door (the Envoy ext_authz
adapter today) decides the same request alike. Linear in the input, no regular expressions."""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable
from typing import TypeVar

V = TypeVar("V")

ACTIONS_BY_METHOD = {"GET": "read", "HEAD": "read", "OPTIONS": "read",
                     "POST": "write", "PUT": "write", "PATCH": "write", "DELETE": "delete"}


def action_for_method(method: str) -> str:
    """read, write or delete for the usual methods; any other method names itself, in lower case."""
    return ACTIONS_BY_METHOD.get(method.upper()) or method.lower()


def resource_for_path(path: str, strip_prefix: str = "") -> str:
    """The path without query string or fragment, less ``strip_prefix`` when it starts with it, without its
    leading slashes: ``/docs/a?x=1`` is ``docs/a``, ``/`` the empty resource."""
    path = path.partition("?")[0].partition("#")[0]
    if strip_prefix and path.startswith(strip_prefix):
        path = path[len(strip_prefix):]
    return path.lstrip("/")


def bearer_token(authorization: str) -> str | None:
    """The credentials of an ``Authorization: Bearer <token>`` header (scheme case-insensitive, RFC 6750); ""
    for the Bearer scheme with nothing after it; None for no header or another scheme."""
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return credentials.strip()


def bearer_challenge(token_given: bool, expired: bool = False) -> str:
    """``WWW-Authenticate`` for a 401 (RFC 6750, section 3): no error code when no credentials were sent."""
    if not token_given:
        return "Bearer"
    description = "the token has expired" if expired else "the token is invalid"
    return f'Bearer error="invalid_token", error_description="{description}"'


def joined_headers(headers: Iterable[tuple[str, V]], wanted: Container[str],
                   text: Callable[[V], str]) -> dict[str, str]:
    """The ``wanted`` headers of ``headers`` (lower-case name, raw value), by name, a repeated one joined with
    commas as HTTP has it, so that a second tenant or token makes the value invalid rather than picking one.
    One pass; only the values kept are decoded (``text``), so a flood of other headers costs linear time."""
    found: dict[str, list[str]] = {}
    for name, value in headers:
        if name in wanted:
            found.setdefault(name, []).append(text(value))
    return {name: ",".join(values) for name, values in found.items()}
