"""The decision log an auditor reads: every deny and a sample of allows, one JSON line each, to a rotated
file or stdout. Tokens are never written; the subject they named is."""

from __future__ import annotations

import logging
import random
import sys
from logging.handlers import RotatingFileHandler

from tenantgate.engines.access import Decision
from tenantgate.logs import JsonFormatter, in_background


class DecisionLog:
    def __init__(self, target: str, *, sample: float = 0.0, max_bytes: int = 10 << 20, backups: int = 5) -> None:
        handler: logging.Handler = (logging.StreamHandler(sys.stdout) if target == "-"
                                    else RotatingFileHandler(target, maxBytes=max_bytes, backupCount=backups))
        handler.setFormatter(JsonFormatter())
        self._logger = logging.getLogger(f"tenantgate.decisions.{id(self)}")
        self._writer = in_background(handler)
        self._logger.handlers[:] = [self._writer]
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        self._sample = sample
        self._handler = handler

    def record(self, decision_id: str, tenant_id: str, action: str, resource: str, environment: str,
               decision: Decision, revision: int) -> None:
        """One decision on ``action`` on ``resource`` of ``tenant_id``; who asked is the decision's subject."""
        if decision.allowed and (self._sample <= 0 or random.random() >= self._sample):
            return
        self._logger.info("decision", extra={
            "decision_id": decision_id, "tenant_id": tenant_id, "subject": decision.subject,
            "subject_tenant_id": decision.subject_tenant_id, "action": action, "resource": resource,
            "environment": environment, "allowed": decision.allowed, "reason": decision.reason.name,
            "rule": decision.rule, "revision": revision})

    def close(self) -> None:
        self._writer.close()
        self._handler.close()
