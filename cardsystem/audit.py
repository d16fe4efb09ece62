"""The audit log: who did what to which customer's record, and when. Its own home, so that
every part that changes a record (the card system, the handoff desk, later the service desk)
writes it alike, and none has to reach into another's insides to do so.

`record` adds an entry inside the caller's transaction (the change and its audit entry are
committed together or not at all); `entries` reads them back.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Dict, List, Optional

from sqlalchemy import select
from sqlalchemy.engine import Engine

from cardsystem.db import session_scope
from cardsystem.models import AuditEntry

logger = logging.getLogger(__name__)


def record(s: Any, action: str, customer_id: Optional[int], entity: str, entity_id: str,
           details: Dict[str, Any], actor: str = "bot") -> None:
    """One entry, in the session `s` of the change it records."""
    s.add(AuditEntry(actor=actor, action=action, customer_id=customer_id, entity=entity,
                     entity_id=entity_id, details=json.dumps(details, ensure_ascii=False, default=str)))
    logger.info("audit %s customer=%s %s=%s", action, customer_id, entity, entity_id)


def entries(engine: Engine, customer_id: Optional[int] = None) -> List[Dict[str, Any]]:
    with session_scope(engine) as s:
        query = select(AuditEntry).order_by(AuditEntry.id)
        if customer_id is not None:
            query = query.where(AuditEntry.customer_id == customer_id)
        return [{"actor": a.actor, "action": a.action, "entity": a.entity, "entity_id": a.entity_id,
                 "details": json.loads(a.details or "{}"), "at": a.at} for a in s.execute(query).scalars()]
