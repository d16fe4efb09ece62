"""The templates' approvals: submitted to the WhatsApp Business Management API, and what Meta
(or the sandbox) decided, kept in `message_templates`. Only an APPROVED template whose text is the
one approved is ever sent (cardsystem.reminders.outreach).

  POST {api}/{version}/{waba-id}/message_templates      submit (creation body; answer id, status)
  GET  {api}/{version}/{waba-id}/message_templates?name= sync (status, rejected_reason)
  webhook field message_template_status_update          APPROVED / REJECTED / PAUSED / DISABLED ...
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

import requests
from sqlalchemy import select
from sqlalchemy.engine import Engine

from cardsystem.config import SANDBOX_DEFAULTS
from cardsystem.db import session_scope
from cardsystem.models import MessageTemplate, utcnow
from cardsystem.reminders.templates import Registry, Template

logger = logging.getLogger(__name__)
TIMEOUT = 15
SANDBOX_WABA = "200000000000001"


@dataclass(frozen=True)
class GraphAccount:
    """Where the templates are managed: the Graph API, the WhatsApp Business Account, a token."""

    api_base: str
    api_version: str
    waba_id: str
    access_token: str

    @classmethod
    def from_env(cls) -> "GraphAccount":
        env = os.environ
        production = env.get("CARDCARE_ENV", "development") == "production"
        values = {
            "api_base": env.get("WHATSAPP_API_BASE") or ("" if production else SANDBOX_DEFAULTS["api_base"]),
            "api_version": env.get("WHATSAPP_API_VERSION") or SANDBOX_DEFAULTS["api_version"],
            "waba_id": env.get("WHATSAPP_BUSINESS_ACCOUNT_ID") or ("" if production else SANDBOX_WABA),
            "access_token": env.get("WHATSAPP_ACCESS_TOKEN") or ("" if production else SANDBOX_DEFAULTS["access_token"]),
        }
        missing = [k for k, v in values.items() if not v]
        if missing:
            raise SystemExit("set WHATSAPP_API_BASE, WHATSAPP_BUSINESS_ACCOUNT_ID and WHATSAPP_ACCESS_TOKEN "
                             f"(missing: {', '.join(missing)})")
        return cls(**values)

    @property
    def headers(self) -> Dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}

    @property
    def templates_url(self) -> str:
        return f"{self.api_base.rstrip('/')}/{self.api_version}/{self.waba_id}/message_templates"


class TemplateBook:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record(self, name: str, language: str, status: str, category: Optional[str] = None,
               meta_id: Optional[str] = None, reason: Optional[str] = None, content_hash: Optional[str] = None,
               submitted: bool = False) -> None:
        now = utcnow()
        with session_scope(self.engine) as s:
            row = s.get(MessageTemplate, (name, language))
            if row is None:
                row = MessageTemplate(name=name, language=language, category=(category or "utility").lower(),
                                      status=status.upper(), content_hash=content_hash or "", updated_at=now)
                s.add(row)
            row.status, row.updated_at = status.upper(), now
            row.category = (category or row.category).lower()
            row.meta_id = str(meta_id) if meta_id else row.meta_id
            row.reason = (reason or None) if reason != "NONE" else None
            if content_hash:
                row.content_hash = content_hash
            if submitted:
                row.submitted_at = now
        logger.info("template %s (%s): %s", name, language, status.upper())

    def states(self) -> Dict[tuple, Dict[str, Any]]:
        with session_scope(self.engine) as s:
            return {(r.name, r.language): {"status": r.status, "category": r.category, "meta_id": r.meta_id,
                                           "reason": r.reason, "content_hash": r.content_hash,
                                           "submitted_at": r.submitted_at, "updated_at": r.updated_at}
                    for r in s.execute(select(MessageTemplate)).scalars()}

    def from_webhook(self, value: Mapping[str, Any]) -> bool:
        """A message_template_status_update webhook's value; False when it names no template we know."""
        name, language = str(value.get("message_template_name") or ""), str(value.get("message_template_language") or "")
        event = str(value.get("event") or "").upper()
        if not name or not event:
            return False
        with session_scope(self.engine) as s:
            known = s.get(MessageTemplate, (name, language or "en"))
            if known is None and value.get("message_template_id"):
                known = s.execute(select(MessageTemplate).where(
                    MessageTemplate.meta_id == str(value["message_template_id"]))).scalars().first()
            if known is None:
                logger.info("status %s of a template this bank never submitted (%s) ignored", event, name)
                return False
            name, language = known.name, known.language
        self.record(name, language, event, meta_id=value.get("message_template_id"), reason=value.get("reason"))
        return True

    # -- the Business Management API --------------------------------------------------------------
    def submit(self, registry: Registry, account: GraphAccount, only: Optional[List[str]] = None,
               session: Optional[requests.Session] = None) -> List[Dict[str, Any]]:
        """Submit every template the account does not have yet (or `only` these names). What the account
        has already is recorded as it stands there (an account can forget a template: a sandbox that
        restarted, a template deleted in the WhatsApp Manager)."""
        http = session or requests.Session()
        try:
            existing = self._listing(account, http)
        except (requests.RequestException, ValueError) as exc:
            return [_unlisted(exc)]
        states = self.states()
        results = []
        for template in registry:
            if only and template.name not in only:
                continue
            found = existing.get(template.key)
            if found is None:
                results.append(self._submit_one(template, account, http))
                continue
            changed = self._record_found(template, found, states.get(template.key))
            note = ("its text changed since it was submitted: give it a new name (e.g. "
                    f"{template.name}_v2) and submit that" if changed else "already at the account")
            results.append({"template": template.name, "language": template.language,
                            "status": "CHANGED" if changed else str(found.get("status") or "").upper(), "note": note})
        return results

    def sync(self, registry: Registry, account: GraphAccount,
             session: Optional[requests.Session] = None) -> List[Dict[str, Any]]:
        """Ask the account for the status of each template in the registry and record it."""
        try:
            existing = self._listing(account, session or requests.Session())
        except (requests.RequestException, ValueError) as exc:
            return [_unlisted(exc)]
        states = self.states()
        results = []
        for template in registry:
            found = existing.get(template.key)
            if found is None:
                results.append({"template": template.name, "language": template.language, "status": "MISSING",
                                "note": "not at Meta: submit it"})
                continue
            self._record_found(template, found, states.get(template.key))
            results.append({"template": template.name, "language": template.language,
                            "status": str(found.get("status")).upper(), "note": found.get("rejected_reason") or ""})
        return results

    def _record_found(self, template: Template, found: Dict[str, Any], state: Optional[Dict[str, Any]]) -> bool:
        """Record a template as the account has it; True when our text changed since it was submitted
        (then the approved text's hash is kept: the changed one is not what Meta approved)."""
        changed = state is not None and state["content_hash"] not in ("", template.content_hash)
        self.record(template.name, template.language, str(found.get("status") or "PENDING"),
                    str(found.get("category") or template.category), found.get("id"), found.get("rejected_reason"),
                    None if changed else template.content_hash)
        return changed

    def _listing(self, account: GraphAccount, http: requests.Session) -> Dict[tuple, Dict[str, Any]]:
        """Every template of the account, by (name, language), following the pages."""
        found: Dict[tuple, Dict[str, Any]] = {}
        url: Optional[str] = account.templates_url
        params: Optional[Dict[str, Any]] = {"limit": 200, "fields": "id,name,language,status,category,rejected_reason"}
        for _ in range(50):
            answer = http.get(url, params=params, headers=account.headers, timeout=TIMEOUT)
            if answer.status_code >= 400:
                raise ValueError(f"HTTP {answer.status_code}: {answer.text[:120]}")
            body = answer.json() or {}
            for item in body.get("data") or []:
                found[(str(item.get("name")), str(item.get("language")))] = item
            url = ((body.get("paging") or {}).get("next")) or None
            params = None
            if not url:
                break
        return found

    def _submit_one(self, template: Template, account: GraphAccount, http: requests.Session) -> Dict[str, Any]:
        try:
            answer = http.post(account.templates_url, json=template.creation_body(), timeout=TIMEOUT,
                               headers=account.headers)
            body = answer.json() if answer.content else {}
        except (requests.RequestException, ValueError) as exc:
            return {"template": template.name, "language": template.language, "status": "ERROR",
                    "note": f"not submitted: {type(exc).__name__}"}
        if answer.status_code >= 400 or "error" in body:
            error = body.get("error") or {}
            return {"template": template.name, "language": template.language, "status": "ERROR",
                    "note": f"refused ({error.get('code')}): {error.get('message') or answer.status_code}"}
        self.record(template.name, template.language, str(body.get("status") or "PENDING"),
                    str(body.get("category") or template.category), body.get("id"), None, template.content_hash,
                    submitted=True)
        return {"template": template.name, "language": template.language, "status": str(body.get("status") or "PENDING"),
                "note": f"submitted (id {body.get('id')})"}


def _unlisted(exc: Exception) -> Dict[str, Any]:
    return {"template": "*", "language": "", "status": "ERROR",
            "note": f"could not list the account's templates: {type(exc).__name__}: {exc}"[:200]}
