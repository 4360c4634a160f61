from typing import Any

from ..models import AuditEvent


def audit_record(*, actor, action: str, obj, message: str,
                 data: dict[str, Any] | None = None) -> AuditEvent:
    return AuditEvent.objects.create(
        actor=actor if getattr(actor, "is_authenticated", False) else None,
        action=action, object_type=type(obj).__name__.lower(), object_id=str(obj.pk),
        message=message[:1000], data=data or {},
    )
