"""The bank writes first: payment-due reminders and the bank's news as approved WhatsApp templates,
with consent (STOP / START), quiet hours, a weekly cap and a cost report.

  templates.py  the registry (templates.yml), checked against WhatsApp's rules, in Graph API shapes
  book.py       the templates' approvals (submit, sync, status webhooks)
  policy.py     reminders.yml: offsets, quiet hours, cap, pauses after errors, rates
  outreach.py   the scheduler, the plan for each notice, what WhatsApp said (the ledger)
  report.py     per day and category: sent, delivered, read, paid within 48 h, cost against SMS
  __main__.py   python -m cardsystem.reminders run | report | templates ...
"""
from __future__ import annotations

import datetime as dt
from typing import Dict, Optional

from cardsystem.db import session_scope
from cardsystem.models import utcnow


def run_once(system, now: Optional[dt.datetime] = None, outreach=None) -> Dict[str, int]:
    """One pass of the scheduler over the card system (`system`: a CardSystem): the reminders and
    statement news due at `now` (UTC) queued, each once. Safe on any number of instances at once."""
    from cardsystem.reminders.outreach import Outreach

    outreach = outreach or Outreach(system.engine, system.settings, desk_rules=system.desk_rules)
    with session_scope(system.engine) as s:
        return outreach.schedule(s, now or utcnow())
