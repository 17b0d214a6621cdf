"""Versioned schema migrations, one list per SQL dialect; applied in order, each once, on start.

Admin commands create a registry (every migration on an empty database); a server only upgrades one that
exists, and takes an empty database for a registry not yet created.
"""

from __future__ import annotations

from tenantgate.errors import ConfigurationError, StorageError

_COMMON = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta (key, value) VALUES ('revision', '0');
CREATE TABLE tenants (
    id TEXT PRIMARY KEY,
    document TEXT NOT NULL,
    digest TEXT NOT NULL,
    state TEXT NOT NULL,
    state_since {float} NOT NULL,
    revision {int} NOT NULL,
    created_at {float} NOT NULL,
    updated_at {float} NOT NULL
);
CREATE INDEX tenants_by_state ON tenants (state, id);
CREATE TABLE tenant_keys (
    tenant_id TEXT NOT NULL,
    purpose TEXT NOT NULL,
    version {int} NOT NULL,
    wrapped {bytes} NOT NULL,
    algorithm TEXT NOT NULL,
    state {int} NOT NULL,
    created_at {float} NOT NULL,
    PRIMARY KEY (tenant_id, purpose, version)
);
CREATE TABLE changes (
    revision {int} NOT NULL,
    tenant_id TEXT NOT NULL,
    action TEXT NOT NULL,
    digest TEXT NOT NULL,
    actor TEXT NOT NULL,
    committed_at {float} NOT NULL,
    PRIMARY KEY (revision, tenant_id)
);
CREATE TABLE audit (
    seq {int} PRIMARY KEY,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    before_digest TEXT NOT NULL,
    after_digest TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_by_tenant ON audit (tenant_id, seq);
"""

# 2: versions below a purpose's min_decryption_version are no longer served.
_KEY_POLICIES = """
CREATE TABLE key_policies (
    tenant_id TEXT NOT NULL,
    purpose TEXT NOT NULL,
    min_decryption_version {int} NOT NULL,
    PRIMARY KEY (tenant_id, purpose)
);
"""

# 3: the registry's identity, random, made with the registry and kept by its copies and backups: a server's
# last-known-good file names the registry it came from, and is not replaced by another registry's state.
_IDENTITY = "INSERT INTO meta (key, value) VALUES ('registry_id', {random_hex})"

# 4: Plan documents, and each tenant's plan id in a column (filled from the stored documents: "" where spec.plan
# cannot be a plan id, as registry/plan_schema.py's plan_key says), so that a plan change finds its tenants.
_PLANS = """
CREATE TABLE plans (
    id TEXT PRIMARY KEY,
    document TEXT NOT NULL,
    digest TEXT NOT NULL,
    revision {int} NOT NULL,
    created_at {float} NOT NULL,
    updated_at {float} NOT NULL
);
ALTER TABLE tenants ADD COLUMN plan TEXT NOT NULL DEFAULT '';
UPDATE tenants SET plan = {plan} WHERE {plan_is_an_id};
CREATE INDEX tenants_by_plan ON tenants (plan, id)
"""
_SQLITE_PLAN = "json_extract(document, '$.spec.plan')"
_POSTGRES_PLAN = "(document::jsonb -> 'spec' ->> 'plan')"

MIGRATIONS: dict[str, list[str]] = {
    "sqlite": [_COMMON.format(float="REAL", int="INTEGER", bytes="BLOB"), _KEY_POLICIES.format(int="INTEGER"),
               _IDENTITY.format(random_hex="lower(hex(randomblob(16)))"),
               _PLANS.format(int="INTEGER", float="REAL", plan=_SQLITE_PLAN, plan_is_an_id=(
                   f"json_type(document, '$.spec.plan') = 'text' AND length({_SQLITE_PLAN}) BETWEEN 1 AND 63"
                   f" AND {_SQLITE_PLAN} GLOB '[A-Za-z0-9]*' AND NOT {_SQLITE_PLAN} GLOB '*[^A-Za-z0-9_.-]*'"))],
    "postgresql": [_COMMON.format(float="DOUBLE PRECISION", int="BIGINT", bytes="BYTEA"),
                   _KEY_POLICIES.format(int="BIGINT"),
                   _IDENTITY.format(random_hex="md5(random()::text || clock_timestamp()::text)"),
                   _PLANS.format(int="BIGINT", float="DOUBLE PRECISION", plan=_POSTGRES_PLAN, plan_is_an_id=(
                       f"jsonb_typeof(document::jsonb -> 'spec' -> 'plan') = 'string'"
                       f" AND {_POSTGRES_PLAN} ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{{0,62}}$'"))],
}

CREATE_LEDGER = "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"


def no_registry(where: str, why: str) -> StorageError:
    """What a server that never creates a registry says when there is none at ``where`` yet."""
    return StorageError(f"no registry at {where}: {why}. A server never creates a registry; create it with "
                        f"`tenantgate apply --registry {where} -f MANIFESTS`")


def created(applied: set[int]) -> bool:
    """Whether a schema ledger with these versions belongs to a registry (the first migration ran)."""
    return 1 in applied


def pending(dialect: str, applied: set[int], where: str) -> list[tuple[int, list[str]]]:
    """The migrations still to run, as (version, statements); refuses a schema newer than this code."""
    known = MIGRATIONS[dialect]
    newest = max(applied, default=0)
    if newest > len(known):
        raise ConfigurationError(f"the registry at {where} has schema version {newest}, newer than this "
                                 f"tenantgate understands ({len(known)}); upgrade tenantgate")
    return [(version, statements(known[version - 1])) for version in range(1, len(known) + 1)
            if version not in applied]


def statements(script: str) -> list[str]:
    return [part.strip() for part in script.split(";") if part.strip()]
