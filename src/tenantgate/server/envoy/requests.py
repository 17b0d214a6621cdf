"""An HTTP request as Envoy's ext_authz describes it (``AttributeContext``), turned into an access request.

Where each part comes from (the README's "Behind Envoy" documents the same):
  tenant       the route's context_extensions["tenant_id"], else the x-tenant-id header, else (left empty
               here) the home tenant of the bearer token;
  subject      the bearer token (Authorization: Bearer), else the mTLS peer's principal as a caller, else none;
  action       context_extensions["action"], else from the method (``httpmapping``);
  resource     the path, less context_extensions["strip_prefix"] (``httpmapping``);
  environment  context_extensions["environment"], else the x-tenant-environment header.
Anything malformed raises InvalidArgument (an HTTP 400): every field is bounded as CheckAccess bounds it."""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass

from envoy.service.auth.v3 import attribute_context_pb2

from tenantgate.bounds import MAX_TOKEN_BYTES
from tenantgate.engines.access import AccessRequest
from tenantgate.errors import InvalidArgument
from tenantgate.httpmapping import action_for_method, bearer_token, joined_headers, resource_for_path
from tenantgate.server import requests
from tenantgate.server.identity import identity_from_principal

TENANT_HEADER = "x-tenant-id"
ENVIRONMENT_HEADER = "x-tenant-environment"
TENANT_EXTENSION = "context_extensions.tenant_id"


@dataclass(slots=True)
class Refusal:
    """No one to decide for: a 401 before any decision."""

    reason: str
    detail: str
    token_given: bool = False


AUTHORIZATION_HEADER = "authorization"
# The only headers the mapping reads.
_READ = (AUTHORIZATION_HEADER, TENANT_HEADER, ENVIRONMENT_HEADER)


def headers_of(http: attribute_context_pb2.AttributeContext.HttpRequest) -> Mapping[str, str]:
    """The request headers the mapping reads, by lower-case name. Envoy sends them as a map, or (with
    ``encode_raw_headers``) as a list, where a repeated header is joined with commas as the map has it; the
    list is read once, keeping only those headers, so its length costs linear time whatever it repeats."""
    if http.headers or not http.HasField("header_map"):
        headers: Mapping[str, str] = http.headers
        return headers
    return joined_headers(((header.key.lower(), header) for header in http.header_map.headers), _READ,
                          lambda header: header.value or header.raw_value.decode("utf-8", "replace"))


def http_access(attributes: attribute_context_pb2.AttributeContext,
                known_tenants: Container[str] = ()) -> AccessRequest | Refusal:
    """The access request to decide (its ``tenant_id`` empty when only the token can name the tenant), or
    a refusal when the request carries no credentials to decide for. ``known_tenants``: ids already
    validated (the snapshot's), which skip the pattern match."""
    extensions = attributes.context_extensions
    http = attributes.request.http
    headers = headers_of(http)
    tenant_id = extensions.get("tenant_id", "")
    if tenant_id:
        requests.tenant_id(tenant_id, field=TENANT_EXTENSION, known_tenants=known_tenants)
    else:
        tenant_id = headers.get(TENANT_HEADER, "")
        if tenant_id:
            requests.tenant_id(tenant_id, field=TENANT_HEADER, known_tenants=known_tenants)
    action = requests.require_text(extensions.get("action") or action_for_method(http.method), "action",
                                   requests.MAX_ACTION)
    # The query string is not part of the resource and may be long (search APIs): only the path is bounded.
    resource = resource_for_path(http.path, extensions.get("strip_prefix", ""))
    if len(resource) > requests.MAX_RESOURCE:
        raise InvalidArgument(f"the path is {len(resource)} characters long; the maximum is "
                              f"{requests.MAX_RESOURCE}", field="path")
    environment = requests.bounded_text(extensions.get("environment") or headers.get(ENVIRONMENT_HEADER, ""),
                                        ENVIRONMENT_HEADER, requests.MAX_ID)
    token = bearer_token(headers.get(AUTHORIZATION_HEADER, ""))
    if token is not None:
        if not token or len(token) > MAX_TOKEN_BYTES:
            return Refusal("TOKEN_INVALID", "the bearer token is empty or too long", token_given=True)
        return AccessRequest(tenant_id, action, resource, token=token, environment=environment)
    principal = attributes.source.principal
    if not principal:
        return Refusal("UNAUTHENTICATED", "no bearer token and no client certificate")
    if not tenant_id:
        raise InvalidArgument(f"no tenant: set the {TENANT_HEADER} header or the route's context_extensions "
                              "tenant_id", field=TENANT_HEADER)
    subject = requests.bounded_text(identity_from_principal(principal), "source.principal", requests.MAX_SUBJECT)
    return AccessRequest(tenant_id, action, resource, subject=subject, environment=environment)
