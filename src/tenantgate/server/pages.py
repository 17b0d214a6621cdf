"""Opaque page tokens: where the next page of a listing starts, bound to the question it pages through.

A token is the last tenant id a page examined, behind a version byte and a digest of the question (the identity,
environment and filters), base64url-encoded. It is not a secret and needs none: a forged one can only start a
listing after another tenant id. It is checked before anything is read: a token from another question, another
version, or none at all is INVALID_ARGUMENT naming ``page_token``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from tenantgate.errors import InvalidArgument
from tenantgate.registry.manifest import TENANT_ID

_VERSION = b"\x01"
_DIGEST_BYTES = 12
# A token this module writes is at most 1 + 12 + 63 bytes, 102 characters once encoded.
MAX_PAGE_TOKEN = 128


def _digest(question: tuple[str, ...]) -> bytes:
    return hashlib.blake2b("\x00".join(question).encode("utf-8", "surrogatepass"), digest_size=_DIGEST_BYTES,
                           person=b"tenantgate-page").digest()


def page_token(after: str, *question: str) -> str:
    """The token for the page after tenant ``after`` of ``question``; "" when there is no next page."""
    if not after:
        return ""
    raw = _VERSION + _digest(question) + after.encode("ascii")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def resume_after(token: str, *question: str) -> str:
    """The tenant id a page ``token`` of ``question`` resumes after ("" for no token)."""
    if not token:
        return ""
    if len(token) > MAX_PAGE_TOKEN:
        raise InvalidArgument(f"page_token is {len(token)} characters long; no page token is longer than "
                              f"{MAX_PAGE_TOKEN}", field="page_token")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    after = raw[1 + _DIGEST_BYTES:].decode("ascii", "replace")
    if raw[:1] != _VERSION or not TENANT_ID.match(after):
        raise InvalidArgument("page_token is not a page token of this server; pass next_page_token as it was "
                              "received", field="page_token")
    if raw[1:1 + _DIGEST_BYTES] != _digest(question):
        raise InvalidArgument("page_token belongs to another question (subject, home tenant, environment or "
                              "include_inactive differ); start again without it", field="page_token")
    return after
