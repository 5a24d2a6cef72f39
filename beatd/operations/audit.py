"""The audit log as both ways in show it: one JSON object per action (`beatd audit --json`,
`GET /v1/audit`)."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from beatd.controls import AuditRecord


def audit_object(record: AuditRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "at": record.at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "action": record.action,
        "entry": record.entry,
        "by": record.by,
        "detail": dict(record.detail),
        "before": None if record.before is None else dict(record.before),
        "after": None if record.after is None else dict(record.after),
    }
