"""The batch's parser (``parse_checks``: principals validated once, comparisons first) and CheckAccess's
(``read_check``) agree on every check: the same principal, action and resource, or the same error naming the same
field, in the batch under its index."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tenantgate.errors import InvalidArgument
from tenantgate.server.requests import parse_checks, read_check
from tenantgate.v1 import decision_pb2 as pb

KNOWN = frozenset({"acme", "globex"})
texts = st.sampled_from(["", "acme", "globex", "nobody", "Not An Id", "a", "x" * 63, "x" * 64, "é", "acme\n"])
subjects = st.sampled_from(["", "user:alice", "u" * 256, "u" * 257])
tokens = st.sampled_from(["", "t", "t" * (16 * 1024 + 1)])
actions = st.sampled_from(["", "read", "a" * 64, "a" * 65])
resources = st.sampled_from(["", "docs/1", "r" * 1024, "r" * 1025])
environments = st.sampled_from(["", "prod", "e" * 63, "e" * 64])
contexts = st.sampled_from([{}, {"ip": "10.0.0.1"}, {"k": "v" * 1025}])


@st.composite
def checks(draw: Any) -> pb.CheckAccessRequest:
    return pb.CheckAccessRequest(tenant_id=draw(texts), subject=draw(subjects), subject_tenant_id=draw(texts),
                                 token=draw(tokens), action=draw(actions), resource=draw(resources),
                                 environment=draw(environments), context=draw(contexts))


def alone(check: pb.CheckAccessRequest) -> tuple[Any, ...]:
    try:
        principal, action, resource = read_check(check, KNOWN)
    except InvalidArgument as error:
        return ("error", error.field, error.message)
    return ("check", principal, action, resource)


@settings(max_examples=400, deadline=None)
@given(batch=st.lists(checks(), min_size=1, max_size=8))
def test_a_batch_parses_each_check_as_check_access_does(batch: list[pb.CheckAccessRequest]) -> None:
    items = [pb.CheckAccessBatchItem(correlation_id=str(index), check=check) for index, check in enumerate(batch)]
    parsed, principals = parse_checks(items, KNOWN)
    assert len(set(principals)) == len(principals)
    for index, ((correlation_id, who, action, resource), check) in enumerate(zip(parsed, batch, strict=True)):
        assert correlation_id == str(index)
        expected = alone(check)
        if isinstance(who, InvalidArgument):
            prefix = f"items[{index}].check."
            assert expected[0] == "error" and who.field == prefix + expected[1]
            assert who.message in (expected[2], prefix + expected[2])
        else:
            assert expected == ("check", principals[who], action, resource)
