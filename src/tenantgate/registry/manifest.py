"""Reading manifests (MANIFEST.md, format v1): files and YAML into typed documents, parsed once.

A ``ManifestDocument`` carries both forms a tenant has: its canonical document (what the registry stores,
digests and diffs) and its typed ``TenantSpec`` (what every layer reads); a ``PlanDocument`` the same for a
``kind: Plan`` document and its ``PlanSpec``. Every problem is reported with the file, the document index and
the field path, and all problems of a run are reported together; a manifest that has any problem is applied
nowhere.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tenantgate.model import DEFAULT_RETENTION, PlanSpec, TenantSpec, TenantState
from tenantgate.registry.bounds import fits
from tenantgate.registry.canonical import UNREPRESENTABLE, canonical_json
from tenantgate.registry.fields import ManifestError, Problems
from tenantgate.registry.plan_schema import parse_plan, plan_key
from tenantgate.registry.schema import TENANT_ID, parse_tenant
from tenantgate.sharing import shared_texts
from tenantgate.units import parse_duration

__all__ = [
    "TENANT_ID", "ManifestDocument", "ManifestError", "document_labels", "issuer_urls", "load_manifests",
    "manifests_from_documents", "parse_document", "parse_manifest_texts", "stored_grants", "stored_keys",
    "stored_retention",
    "tenant_from_document", "with_state"
]

# A tenant document, aliases expanded, is refused past this size before anything reads it (registry/bounds.py).
MAX_DOCUMENT_BYTES = 4 * 1024 * 1024
# libyaml's safe loader where PyYAML was built with it: the same documents, parsed several times faster.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class ManifestDocument:
    source: str  # "file.yaml: document 2"
    document: dict[str, Any]  # canonical form, as stored in the registry
    tenant: TenantSpec


@dataclass(frozen=True)
class PlanDocument:
    source: str
    document: dict[str, Any]  # canonical form, as stored in the registry
    plan: PlanSpec


# One document of a manifest: a tenant or a plan.
Manifest = ManifestDocument | PlanDocument


def load_manifests(paths: Iterable[str | Path]) -> list[Manifest]:
    """Read every ``*.yaml``/``*.yml`` file under the given files or directories (sorted, recursive)."""
    files: list[Path] = []
    problems: list[str] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            problems.append(f"{path}: no such file or directory")
    if not files and not problems:
        problems.append("no manifest files found (*.yaml, *.yml)")
    texts: list[tuple[str, str]] = []
    for file in files:
        try:
            texts.append((str(file), file.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{file}: cannot read: {exc}")
    return parse_manifest_texts(texts, problems)


def parse_manifest_texts(texts: Iterable[tuple[str, str]], problems: list[str] | None = None) -> list[Manifest]:
    """Parse (name, YAML text) pairs into tenant and plan documents; all problems are raised together."""
    problems = list(problems or [])
    named: list[tuple[str, Any]] = []
    for name, text in texts:
        try:
            loaded = list(yaml.load_all(text, Loader=_YAML_LOADER))
        except yaml.YAMLError as exc:
            problems.append(f"{name}: cannot read YAML: {exc}")
            continue
        named.extend((f"{name}: document {index}", raw) for index, raw in enumerate(loaded, start=1)
                     if raw is not None)
    return _parsed(named, problems)


def manifests_from_documents(documents: Iterable[Any]) -> list[Manifest]:
    """Documents already read (mappings, as YAML or JSON loads them) parsed as manifests: what Python callers
    and tests hand to ``apply``; all problems are raised together."""
    return _parsed(((f"document {index}", raw) for index, raw in enumerate(documents, start=1)), [])


def _parsed(named: Iterable[tuple[str, Any]], problems: list[str]) -> list[Manifest]:
    """Each (where, document) parsed, none over the size bound and no tenant or plan defined twice; every
    problem, ``problems`` first, raised together."""
    documents: list[Manifest] = []
    for where, raw in named:
        if not fits(raw, MAX_DOCUMENT_BYTES):
            problems.append(f"{where}: larger than {MAX_DOCUMENT_BYTES // 1024 // 1024} MiB once its YAML aliases "
                            "are expanded")
            continue
        try:
            documents.append(parse_plan_document(raw, where) if _is_plan(raw) else parse_document(raw, where))
        except ManifestError as exc:
            problems.extend(exc.problems)
    seen: dict[tuple[str, str], str] = {}
    for doc in documents:
        what, name = ("plan", doc.plan.id) if isinstance(doc, PlanDocument) else ("tenant", doc.tenant.id)
        if (what, name) in seen:
            problems.append(f"{doc.source}: metadata.id: {what} {name!r} is also defined in {seen[what, name]}")
        seen.setdefault((what, name), doc.source)
    if problems:
        raise ManifestError(problems)
    return documents


def _is_plan(raw: Any) -> bool:
    return isinstance(raw, dict) and raw.get("kind") == "Plan"


def parse_document(raw: Any, where: str = "document") -> ManifestDocument:
    tenant = _checked_tenant(raw, where)
    return ManifestDocument(source=where, document=_canonical(raw, where), tenant=tenant)


def parse_plan_document(raw: Any, where: str = "document") -> PlanDocument:
    plan = _checked_plan(raw, where)
    return PlanDocument(source=where, document=_canonical(raw, where), plan=plan)


def _canonical(raw: Any, where: str) -> dict[str, Any]:
    try:
        document: dict[str, Any] = json.loads(canonical_json(raw))
    except (TypeError, ValueError):
        raise ManifestError([f"{where}: {UNREPRESENTABLE}"]) from None
    return document


def plan_from_document(document: Mapping[str, Any]) -> PlanSpec:
    """Parse a plan document the registry stored; it was validated when applied."""
    return _stored(document, "plan", _checked_plan)


def _checked_plan(raw: Any, where: str) -> PlanSpec:
    return _checked(raw, where, parse_plan, "plan")


def tenant_from_document(document: Mapping[str, Any]) -> TenantSpec:
    """Parse a document the registry stored; it was validated when applied. It is canonical JSON already, so
    it is not written out and read back as a manifest's document is (a fifth of the time of compiling it)."""
    return _stored(document, "tenant", _checked_tenant)


def _checked_tenant(raw: Any, where: str) -> TenantSpec:
    return _checked(raw, where, parse_tenant, "tenant")


Parsed = TypeVar("Parsed")


def _stored(document: Mapping[str, Any], kind: str, check: Callable[[Any, str], Parsed]) -> Parsed:
    raw = document if isinstance(document, dict) else dict(document)
    return check(raw, f"stored {kind} {document.get('metadata', {}).get('id')!r}")


def _checked(raw: Any, where: str, parse: Callable[[Any, Problems], Parsed | None], kind: str) -> Parsed:
    problems = Problems(where)
    parsed = parse(raw, problems)
    if problems.items or parsed is None:
        raise ManifestError(problems.items or [f"{where}: not a {kind} document"])
    return parsed


# The stored document is the manifest as applied (so `tenant get` shows what was written, and digests stay the
# same across versions). The few things read or changed in it without parsing it whole are here, beside the
# parser, so that no other module knows its field paths.

def with_state(document: Mapping[str, Any], state: TenantState) -> dict[str, Any]:
    """A stored document with its ``spec.state`` changed, as a transition stores it."""
    copy: dict[str, Any] = json.loads(canonical_json(document))
    copy.setdefault("spec", {})["state"] = state.value
    return copy


def document_labels(document: Mapping[str, Any]) -> dict[str, str]:
    """A stored document's labels, without parsing the rest (a listing filters a whole registry by them)."""
    labels = document.get("metadata", {}).get("labels") or {}
    return {str(key): str(value) for key, value in labels.items()} if isinstance(labels, dict) else {}


def stored_retention(document: Mapping[str, Any]) -> int:
    """A stored document's retention period in seconds, without parsing the rest: a deletion reads it, and must
    work on a document a newer version wrote (whose other fields this version may not know)."""
    retention = document.get("spec", {}).get("retention")
    return DEFAULT_RETENTION if retention is None else parse_duration(str(retention))


def stored_keys(document: Mapping[str, Any]) -> tuple[tuple[str, ...], int | None]:
    """A stored document's key purposes and rotation period (seconds), without parsing the rest, for the same
    reason: key rotation works whichever version wrote the document."""
    keys = document.get("spec", {}).get("keys") or {}
    purposes = tuple(str(purpose) for purpose in keys.get("purposes") or ())
    every = keys.get("rotate_every")
    return purposes, None if not every else parse_duration(str(every))


def stored_grants(document_json: str) -> tuple[list[tuple[str, str]], list[str]]:
    """The (home tenant, subject) each of a stored document's cross-tenant grants names, in order, and the
    tenant's environments, without parsing the rest (a snapshot indexes every tenant's grants, compiled or not);
    nothing for a document without grants or one this version cannot read, whose compiling reports the problem."""
    if '"grants"' not in document_json:
        return [], []
    try:
        spec = json.loads(document_json).get("spec", {})
        found = [(grant["tenant"], grant["subject"]) for grant in spec.get("access", {}).get("grants") or []]
        environments = list(spec.get("environments") or [])
    except (ValueError, AttributeError, TypeError, KeyError):
        return [], []
    if all(isinstance(home, str) and isinstance(subject, str) for home, subject in found) \
            and all(isinstance(environment, str) for environment in environments):
        return found, environments
    return [], []


def document_plan(document: Mapping[str, Any]) -> str:
    """The plan id a stored tenant document names ("" for none, or for a ``spec.plan`` that cannot be a plan id):
    the registry keeps it in a column, to find every tenant on a plan without reading their documents."""
    plan = document.get("spec", {}).get("plan")
    return plan_key(plan) if isinstance(plan, str) else ""


def stored_quotas(document: Mapping[str, Any]) -> dict[str, Any]:
    """A stored tenant or plan document's quotas as written, without parsing the rest: an apply compares the
    effective quotas of every tenant on a changed plan, and a plan may have many."""
    quotas = document.get("spec", {}).get("quotas") or {}
    return dict(quotas) if isinstance(quotas, dict) else {}


def effective_quota_names(document: Mapping[str, Any], plan_document: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The names of the quotas a stored tenant document is served with, its plan's first (``tenantgate.plans``
    merges them so): ``plan_document`` is the stored Plan its ``spec.plan`` names, or None."""
    planned = stored_quotas(plan_document) if plan_document is not None else {}
    return (*planned, *(name for name in stored_quotas(document) if name not in planned))


def issuer_urls(document_json: str) -> tuple[str, ...]:
    """The token issuers a stored document trusts, without parsing the rest of the tenant (a snapshot indexes
    them for every tenant, compiled or not); none for a document this version cannot read, whose compiling
    reports the problem."""
    if '"tokens"' not in document_json:
        return ()
    try:
        issuers = json.loads(document_json).get("spec", {}).get("tokens", {}).get("issuers") or []
        return shared_texts(i["issuer"] for i in issuers if isinstance(i, dict) and isinstance(i.get("issuer"), str))
    except (ValueError, AttributeError, TypeError):
        return ()
