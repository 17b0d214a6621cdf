"""Shared fixtures: manifests built in code, a real SQLite registry, and a real server on a loopback port."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from tenantgate.v1 import decision_pb2_grpc

from tenantgate.config import ServeConfig
from tenantgate.keywrap import ALGORITHM, MasterKey, new_data_key
from tenantgate.registry.manifest import parse_document
from tenantgate.registry.sqlite import SQLiteStore
from tenantgate.server.app import DecisionServer
from tenantgate.snapshot import Snapshot, build_snapshot, build_tenant

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "manifests"
ISSUER = "https://idp.test.example"


def tenant_doc(tenant_id: str, *, state: str = "Active", **spec: Any) -> dict[str, Any]:
    """A Tenant manifest document; keyword arguments become spec fields."""
    return {"apiVersion": "tenantgate/v1", "kind": "Tenant", "metadata": {"id": tenant_id, "name": tenant_id},
            "spec": {"state": state, **spec}}


def snapshot_of(*documents: dict[str, Any], revision: int = 1) -> Snapshot:
    """A snapshot built straight from documents, for engine tests."""
    views = [build_tenant(parse_document(doc).tenant, revision) for doc in documents]
    return build_snapshot(revision, views, time.time())


class Issuer:
    """A test identity provider: an EC key pair whose public half goes into a tenant's JWKS."""

    def __init__(self, url: str = ISSUER, kid: str = "test-1") -> None:
        self.url = url
        self.kid = kid
        self.private_key = ec.generate_private_key(ec.SECP256R1())

    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.private_key.public_key()))
        jwk.update({"kid": self.kid, "alg": "ES256"})
        return {"keys": [jwk]}

    def issuer_spec(self, audience: str = "tenantgate") -> dict[str, Any]:
        return {"issuer": self.url, "audience": audience, "tenant_claim": "tid", "jwks": self.jwks()}

    def token(self, tenant_id: str, subject: str, *, expires_in: float = 300, **claims: Any) -> str:
        now = int(time.time())
        payload = {"iss": self.url, "aud": "tenantgate", "sub": subject, "tid": tenant_id, "iat": now,
                   "exp": now + expires_in, **claims}
        return jwt.encode(payload, self.private_key, algorithm="ES256", headers={"kid": self.kid})


@pytest.fixture
def issuer() -> Issuer:
    return Issuer()


@pytest.fixture
def master_key() -> MasterKey:
    return MasterKey(os.urandom(32))


@pytest.fixture
def master_key_file(tmp_path: Path) -> Path:
    path = tmp_path / "master.key"
    path.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    return path


def key_factory_for(master_key: MasterKey) -> Callable[[str, str, int], tuple[bytes, str]]:
    def factory(tenant_id: str, purpose: str, version: int) -> tuple[bytes, str]:
        return master_key.wrap(new_data_key(), tenant_id=tenant_id, purpose=purpose, version=version), ALGORITHM

    return factory


@pytest.fixture
def registry_path(tmp_path: Path) -> Path:
    return tmp_path / "registry.db"


@pytest.fixture
def store(registry_path: Path) -> Iterator[SQLiteStore]:
    opened = SQLiteStore(registry_path)
    yield opened
    opened.close()


class RunningServer:
    """A DecisionServer on an ephemeral loopback port, on its own event loop thread."""

    def __init__(self, config: ServeConfig, master_key: MasterKey | None) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: DecisionServer = self.call(self._start(config, master_key))
        self.target = f"127.0.0.1:{self.server.port}"
        self.channel = grpc.insecure_channel(self.target)
        self.stub = decision_pb2_grpc.DecisionServiceStub(self.channel)

    async def _start(self, config: ServeConfig, master_key: MasterKey | None) -> DecisionServer:
        server = DecisionServer(config, master_key)
        await server.start()
        return server

    def call(self, coroutine: Any, timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def wait_synced(self, revision: int = 0, timeout: float = 5.0) -> None:
        snapshot = self.call(self.server.holder.wait_for_revision(revision, timeout), timeout + 1)
        assert snapshot is not None, f"server did not reach revision {revision} within {timeout}s"

    def stop(self) -> None:
        self.channel.close()
        self.call(self.server.stop(grace=0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def start_server(registry_path: Path) -> Iterator[Callable[..., RunningServer]]:
    started: list[RunningServer] = []

    def start(master_key: MasterKey | None = None, **settings: Any) -> RunningServer:
        config = ServeConfig(registry_url=f"sqlite://{registry_path}", listen="127.0.0.1:0",
                             sync_interval=settings.pop("sync_interval", 0.05), **settings)
        server = RunningServer(config, master_key)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
