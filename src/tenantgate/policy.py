"""Access rules compiled for the hot path: built once per snapshot, matched without allocation.

A rule is ``action:resource-glob``; a lone ``*`` is every action on every resource. Globs are matched in
time linear in the resource (see ``tenantgate.globs``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tenantgate.globs import ResourceMatcher, compile_glob
from tenantgate.model import AccessSpec, Role
from tenantgate.sharing import EMPTY_MAPPING, shared_set

NO_ENVIRONMENT = ""
GROUP = "group:"  # the subject kind that names a group of the tenant; never a caller's identity


@dataclass(frozen=True, slots=True)
class Rule:
    id: str  # "acme/roles/editor/allow/0": where the deciding rule lives in the manifest
    action: str
    matches: ResourceMatcher


class RuleSet:
    """Rules indexed by action; ``first_match`` checks the action's rules, then the wildcard ones."""

    __slots__ = ("_any_action", "_by_action")

    def __init__(self, rules: Iterable[Rule]) -> None:
        by_action: dict[str, list[Rule]] = {}
        any_action: list[Rule] = []
        for rule in rules:
            (any_action if rule.action == "*" else by_action.setdefault(rule.action, [])).append(rule)
        self._by_action = {action: tuple(found) for action, found in by_action.items()}
        self._any_action = tuple(any_action)

    def __bool__(self) -> bool:
        return bool(self._by_action or self._any_action)

    @property
    def actions(self) -> Iterable[str]:
        """The actions that rules name (not ``*``)."""
        return self._by_action.keys()

    def candidates(self, action: str) -> tuple[Rule, ...]:
        """The rules that may match ``action``, in the order ``first_match`` tries them."""
        return self._by_action.get(action, ()) + self._any_action

    def first_match(self, action: str, resource: str) -> Rule | None:
        for rule in self._by_action.get(action, ()):
            if rule.matches(resource):
                return rule
        for rule in self._any_action:
            if rule.matches(resource):
                return rule
        return None


EMPTY_RULES = RuleSet(())


@functools.lru_cache(maxsize=65536)
def compile_rules(texts: tuple[str, ...], id_prefix: str) -> tuple[Rule, ...]:
    """Rules with ids relative to their tenant ("roles/editor/allow/0"), so tenants that define a role
    the same way share one compiled copy."""
    rules = []
    for index, text in enumerate(texts):
        if text == "*":
            action, glob = "*", "*"
        else:
            action, _, glob = text.partition(":")
        rules.append(Rule(f"{id_prefix}/{index}", action, compile_glob(glob)))
    return tuple(rules)


@functools.lru_cache(maxsize=65536)
def _rule_set(texts: tuple[str, ...], id_prefix: str) -> RuleSet:
    return RuleSet(compile_rules(texts, id_prefix)) if texts else EMPTY_RULES


@dataclass(frozen=True, slots=True)
class SubjectRules:
    allow: RuleSet
    deny: RuleSet


NO_RULES = SubjectRules(EMPTY_RULES, EMPTY_RULES)


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    tenant_deny: RuleSet
    # subject -> environment ("" for requests that name none) -> the rules of every role bound there
    subjects: Mapping[str, Mapping[str, SubjectRules]]
    # (home tenant, subject) -> what this tenant grants that foreign subject
    grants: Mapping[tuple[str, str], RuleSet]
    suspended_allow: RuleSet
    environments: frozenset[str]

    def rules_for(self, subject: str, environment: str) -> SubjectRules:
        by_environment = self.subjects.get(subject)
        if by_environment is None:
            return NO_RULES
        return by_environment.get(environment, NO_RULES)


@functools.lru_cache(maxsize=65536)
def _subject_rules(roles: tuple[Role, ...]) -> SubjectRules:
    """The rules of a set of roles (in name order), shared by every subject and tenant holding that set."""
    return SubjectRules(
        RuleSet(rule for role in roles for rule in compile_rules(role.allow, f"roles/{role.name}/allow")),
        RuleSet(rule for role in roles for rule in compile_rules(role.deny, f"roles/{role.name}/deny")),
    )


@functools.lru_cache(maxsize=65536)
def _per_environment(held: tuple[tuple[Role, frozenset[str] | None], ...],
                     environments: tuple[str, ...]) -> Mapping[str, SubjectRules]:
    per_env: dict[str, SubjectRules] = {}
    for environment in (NO_ENVIRONMENT, *environments):
        roles = {role for role, only in held if only is None or (environment and environment in only)}
        per_env[environment] = _subject_rules(tuple(sorted(roles, key=lambda role: role.name)))
    return per_env


def compile_policy(access: AccessSpec, environments: Iterable[str]) -> CompiledPolicy:
    """A tenant's rules indexed for decisions. Rule ids are relative to the tenant; compiled pieces are
    shared between tenants whose manifests define them alike."""
    envs = tuple(sorted(set(environments)))
    # Each principal's bindings: its own, plus those of every group it belongs to. A "group:" subject
    # is expanded to its members and never becomes a key itself, so no caller can act as a whole group;
    # a group listed inside a group (refused by manifest validation) is skipped, not expanded.
    bound: dict[str, list[tuple[Role, frozenset[str] | None]]] = {}
    for binding in access.bindings:
        principals = (access.groups.get(binding.subject[len(GROUP):], ()) if binding.subject.startswith(GROUP)
                      else (binding.subject,))
        for principal in principals:
            if principal.startswith(GROUP):
                continue
            bound.setdefault(principal, []).extend((access.roles[role], binding.environments)
                                                   for role in binding.roles)
    subjects = {principal: _per_environment(tuple(held), envs) for principal, held in bound.items()}

    grants: dict[tuple[str, str], list[Rule]] = {}
    for index, grant in enumerate(access.grants):
        if grant.subject.startswith(GROUP):  # refused by manifest validation: groups do not cross tenants
            continue
        grants.setdefault((grant.tenant, grant.subject), []).extend(
            compile_rules(grant.allow, f"grants/{index}/allow"))

    return CompiledPolicy(
        tenant_deny=_rule_set(access.deny, "deny"),
        subjects=subjects,
        grants={key: RuleSet(rules) for key, rules in grants.items()} if grants else EMPTY_MAPPING,
        suspended_allow=_rule_set(access.suspended_allow, "suspended_allow"),
        environments=shared_set(envs),
    )
