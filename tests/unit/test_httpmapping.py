"""The HTTP request -> access check mapping that the Envoy adapter (and any HTTP front door) uses."""

from __future__ import annotations

import pytest

from tenantgate.httpmapping import action_for_method, bearer_token, resource_for_path


@pytest.mark.parametrize(("method", "action"), [
    ("GET", "read"), ("HEAD", "read"), ("OPTIONS", "read"), ("POST", "write"), ("PUT", "write"),
    ("PATCH", "write"), ("DELETE", "delete"), ("PURGE", "purge"), ("get", "read"), ("pOST", "write")])
def test_methods_name_actions(method: str, action: str) -> None:
    assert action_for_method(method) == action


@pytest.mark.parametrize(("path", "prefix", "resource"), [
    ("/docs/a", "", "docs/a"), ("/docs/a?x=1&y=/z", "", "docs/a"), ("/docs/a#frag?x", "", "docs/a"),
    ("/", "", ""), ("", "", ""), ("//docs//a", "", "docs//a"), ("/api/v1/docs/a", "/api/v1", "docs/a"),
    ("/api/v10/docs", "/api/v1", "0/docs"), ("/other/docs", "/api", "other/docs"), ("/api", "/api", "")])
def test_paths_name_resources(path: str, prefix: str, resource: str) -> None:
    assert resource_for_path(path, prefix) == resource


@pytest.mark.parametrize(("header", "token"), [
    ("Bearer abc.def.ghi", "abc.def.ghi"), ("bearer  abc ", "abc"), ("BEARER abc", "abc"), ("Bearer", ""),
    ("Bearer ", ""), ("", None), ("Basic dXNlcjpwdw==", None), ("Bearerabc", None)])
def test_bearer_tokens(header: str, token: str | None) -> None:
    assert bearer_token(header) == token
