"""The one JSON serialisation used for storage and digests, so that equal documents compare equal; a leaf
module, so that the manifest parser and the JWKS check (which manifest imports) share it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

# Why canonical_json refused a value (json.dumps raises TypeError or ValueError).
UNREPRESENTABLE = ("holds a value JSON cannot represent (a date, binary data, keys of mixed types such as 1 and "
                   "'a' in one mapping); quote it")


def canonical_json(document: Mapping[str, Any]) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
