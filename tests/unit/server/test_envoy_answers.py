"""The ext_authz answer built from a template (the fast path) equals the one built from nothing, and Envoy's
peer principals name callers as their certificates do."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tenantgate.server.envoy.answers import CheckAnswers, GateAnswer, _let_through
from tenantgate.server.identity import identity_from_principal

texts = st.text(min_size=1, max_size=40)


@settings(max_examples=400, deadline=None)
@given(reason=st.sampled_from(["ALLOWED", "NO_MATCHING_GRANT", "EXPLICIT_DENY"]),
       tenant=st.sampled_from(["acme", "globex"]), subject=texts, home=st.sampled_from(["acme", "globex"]),
       decision_id=st.from_regex(r"[0-9a-f]{4}-[0-9a-f]{1,3}", fullmatch=True),
       rule=st.sampled_from(["", "acme/roles/r/allow/0"]), revision=st.integers(1, 3), shadow=st.booleans())
def test_a_templated_answer_equals_one_built_from_nothing(reason: str, tenant: str, subject: str, home: str,
                                                         decision_id: str, rule: str, revision: int,
                                                         shadow: bool) -> None:
    answers = CheckAnswers()
    status = 200 if reason == "ALLOWED" else 403
    for other_subject in ("user:someone-else", subject):  # the template is made by one answer, reused by the next
        first = GateAnswer(status, reason, tenant, other_subject, home, "0000-0", rule, revision)
        answers.response(first, shadow)
    answer = GateAnswer(status, reason, tenant, subject, home, decision_id, rule, revision)
    if status == 200 or shadow:
        assert answers.response(answer, shadow) == _let_through(answer, shadow)


@pytest.mark.parametrize(("principal", "caller"), [
    ("spiffe://mesh.example/service/billing", "service:billing"),
    ("spiffe://cluster.local/ns/shop/sa/billing", "service:spiffe://cluster.local/ns/shop/sa/billing"),
    ("billing.shop.svc", "service:billing.shop.svc"),
    ("CN=billing,O=Acme\\, Inc.,C=DE", "service:billing"),   # a subject: its CN, as a certificate names it
    ("O=Acme", "service:O=Acme"),
    ("CN=" + "a" * 80, "service:CN=" + "a" * 80),           # not a valid subject: taken as it is
])
def test_peer_principals_name_callers_as_their_certificates_do(principal: str, caller: str) -> None:
    assert identity_from_principal(principal) == caller
