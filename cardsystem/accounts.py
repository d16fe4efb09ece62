"""Agent accounts for the console: who may sign in, with what password, their sessions, and the
throttling of wrong passwords (per account and per client address, counted in the database so
every instance agrees). Web authentication only: which chats and requests an agent works is the
handoff desk's and the service desk's business.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import math
import re
import secrets
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple

from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Engine

from cardsystem import audit
from cardsystem.db import session_scope
from cardsystem.errors import CardSystemError, NotAllowed, NotFound
from cardsystem.models import Agent, AgentSession, LoginFailure

USERNAME_RE = re.compile(r"^[a-z0-9._-]{3,60}$")
SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1}  # 16 MiB per hash: memory-hard, ~50 ms here
ROLES = ("agent", "supervisor", "grievance_officer")  # the last: the bank's nodal officer, high on the escalation ladder
ONLINE_WITHIN = dt.timedelta(minutes=2)


class TooManyAttempts(CardSystemError):
    """Too many failed sign-ins from one address: refused without checking the password."""

    def __init__(self, retry_after: int) -> None:
        minutes = math.ceil(retry_after / 60)
        super().__init__("throttled", f"Too many failed sign-ins from this address. Try again in {minutes} "
                                      f"minute{'s' if minutes != 1 else ''}.")
        self.retry_after = retry_after


@dataclass(frozen=True)
class AgentView:
    id: int
    username: str
    first_name: str
    online: bool = False
    role: str = "agent"

    @property
    def supervisor(self) -> bool:
        return self.role == "supervisor"


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, dklen=32, **SCRYPT)
    return f"scrypt${SCRYPT['n']}${SCRYPT['r']}${SCRYPT['p']}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        computed = hashlib.scrypt(password.encode("utf-8"), salt=bytes.fromhex(salt), dklen=32,
                                  n=int(n), r=int(r), p=int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(computed.hex(), digest)


_DUMMY_HASH = hash_password(secrets.token_hex(8))  # same work for unknown usernames (no timing oracle)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def agent_view(agent: Agent, online: bool = False) -> AgentView:
    return AgentView(agent.id, agent.username, agent.first_name, online,
                     agent.role if agent.role in ROLES else "agent")  # NULL (older rows): an agent


class AgentAccounts:
    """Agents' accounts and console sessions; `settings` carries session_hours, lock_after,
    lock_for, address_limit and address_window (cardsystem.handoff.HandoffSettings)."""

    def __init__(self, engine: Engine, settings: Any, now: Callable[[], dt.datetime]) -> None:
        self.engine, self.settings, self.now = engine, settings, now

    def create_agent(self, username: str, first_name: str, password: str, role: str = "agent") -> AgentView:
        username = username.strip().lower()
        if not USERNAME_RE.match(username):
            raise NotAllowed("refused", "username: 3-60 characters of a-z, 0-9, dot, dash or underscore")
        if len(password) < 10 or len(set(password)) < 6 or password.lower() in (username, first_name.strip().lower()):
            raise NotAllowed("refused", "password: at least 10 characters, 6 of them different, not the name")
        if not first_name.strip():
            raise NotAllowed("refused", "first name is required")
        if role not in ROLES:
            raise NotAllowed("refused", f"role: one of {', '.join(ROLES)}")
        with session_scope(self.engine) as s:
            if s.execute(select(Agent).where(Agent.username == username)).scalar_one_or_none():
                raise NotAllowed("refused", f"agent {username} exists already")
            agent = Agent(username=username, first_name=first_name.strip()[:60], password_hash=hash_password(password),
                          role=role, active=True, created_at=self.now())
            s.add(agent)
            s.flush()
            audit.record(s, "create_agent", None, "agent", username, {"role": role}, actor="admin")
            return self._agent_view(agent)

    def sign_in(self, username: str, password: str,
                address: Optional[str] = None) -> Optional[Tuple[str, str, AgentView]]:
        """(session token, CSRF token, agent) for the right password of an unlocked account; None
        otherwise, whatever the reason, so a caller cannot tell which usernames exist. An address
        with too many recent failures is refused outright (TooManyAttempts)."""
        name = (username or "").strip().lower()
        with session_scope(self.engine) as s:
            now = self.now()
            if address:
                wait = self._address_wait(s, address, now)
                if wait:
                    raise TooManyAttempts(wait)
            agent = s.execute(select(Agent).where(Agent.username == name)).scalar_one_or_none()
            # the hash is checked even for a locked or unknown account: the same work, no timing oracle
            good = verify_password(password or "", agent.password_hash if agent else _DUMMY_HASH)
            locked = agent is not None and agent.locked_until is not None and agent.locked_until > now
            if agent is None or not good or not agent.active or locked:
                self._sign_in_failed(s, agent, address, now, locked)
                return None
            token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
            s.add(AgentSession(token_hash=_token_hash(token), agent_id=agent.id, csrf_token=csrf, created_at=now,
                               expires_at=now + dt.timedelta(hours=self.settings.session_hours)))
            agent.last_seen_at, agent.failed_logins, agent.locked_until = now, 0, None
            audit.record(s, "agent_sign_in", None, "agent", agent.username, {"address": address},
                               actor=f"agent:{agent.username}")
            return token, csrf, self._agent_view(agent, online=True)

    def unlock(self, username: str, address: Optional[str] = None) -> None:
        """Let a locked-out agent sign in again now (and forget an address's failures, if given)."""
        with session_scope(self.engine) as s:
            agent = s.execute(select(Agent).where(Agent.username == (username or "").strip().lower())
                              ).scalar_one_or_none()
            if agent is None:
                raise NotFound("unknown_agent", f"no agent {username}")
            agent.failed_logins, agent.locked_until = 0, None
            audit.record(s, "agent_unlocked", None, "agent", agent.username, {}, actor="admin")
            if address:
                s.execute(delete(LoginFailure).where(LoginFailure.address == address))
                audit.record(s, "address_unlocked", None, "address", address[:40], {}, actor="admin")

    def disable(self, username: str) -> None:
        """An account that may no longer sign in (someone who left, a demo account): its sessions end."""
        with session_scope(self.engine) as s:
            agent = s.execute(select(Agent).where(Agent.username == (username or "").strip().lower())
                              ).scalar_one_or_none()
            if agent is None:
                raise NotFound("unknown_agent", f"no agent {username}")
            agent.active = False
            s.execute(delete(AgentSession).where(AgentSession.agent_id == agent.id))
            audit.record(s, "agent_disabled", None, "agent", agent.username, {}, actor="admin")

    def password_is(self, username: str, password: str) -> bool:
        """Whether an active account signs in with this password (the preflight's demo-account check);
        counts nothing, audits nothing."""
        with session_scope(self.engine) as s:
            stored = s.execute(select(Agent.password_hash).where(Agent.username == username, Agent.active.is_(True))
                               ).scalar_one_or_none()
        return stored is not None and verify_password(password, stored)

    def session(self, token: Optional[str]) -> Optional[Tuple[AgentView, str]]:
        """The signed-in agent and the session's CSRF token; marks the agent as online."""
        if not token:
            return None
        with session_scope(self.engine) as s:
            row = s.execute(select(AgentSession).where(AgentSession.token_hash == _token_hash(token))).scalar_one_or_none()
            now = self.now()
            if row is None or row.expires_at <= now:
                return None
            agent = s.get(Agent, row.agent_id)
            if agent is None or not agent.active:
                return None
            agent.last_seen_at = now
            return self._agent_view(agent, online=True), row.csrf_token

    def sign_out(self, token: str) -> None:
        with session_scope(self.engine) as s:
            row = s.execute(select(AgentSession).where(AgentSession.token_hash == _token_hash(token))).scalar_one_or_none()
            if row is not None:
                agent = s.get(Agent, row.agent_id)
                agent.last_seen_at = None
                s.delete(row)
                audit.record(s, "agent_sign_out", None, "agent", agent.username, {}, actor=f"agent:{agent.username}")

    def agents(self) -> List[AgentView]:
        with session_scope(self.engine) as s:
            now = self.now()
            return [self._agent_view(a, online=bool(a.last_seen_at and now - a.last_seen_at < ONLINE_WITHIN))
                    for a in s.execute(select(Agent).where(Agent.active.is_(True)).order_by(Agent.username)).scalars()]

    def locked_until(self, username: str) -> Optional[dt.datetime]:
        """Until when an account is locked after wrong passwords (None: it is not)."""
        with session_scope(self.engine) as s:
            until = s.execute(select(Agent.locked_until).where(Agent.username == username)).scalar_one_or_none()
            return until if until and until > self.now() else None

    def _sign_in_failed(self, s, agent: Optional[Agent], address: Optional[str], now: dt.datetime,
                        locked: bool) -> None:
        """Audit a failure, count it against the account (locking it at the limit) and the address."""
        # an unknown name is not recorded: it may be a password typed into the wrong box
        recorded = agent.username if agent else "(unknown account)"
        audit.record(s, "agent_sign_in_failed", None, "agent", recorded, {"address": address, "locked": locked},
                           actor="console")
        if agent is not None and not locked:
            self._count_account_failure(s, agent, now)
        if address:
            since = now - self.settings.address_window
            s.execute(delete(LoginFailure).where(LoginFailure.at <= since))  # older ones no longer count
            s.add(LoginFailure(at=now, address=address, username=recorded))
            if self._failures_from(s, address, since) == self.settings.address_limit:
                audit.record(s, "address_locked", None, "address", address[:40],
                                   {"failures": self.settings.address_limit}, actor="console")

    def _count_account_failure(self, s, agent: Agent, now: dt.datetime) -> None:
        # one UPDATE: failures arriving at once on several instances are all counted
        s.execute(update(Agent).where(Agent.id == agent.id)
                  .values(failed_logins=func.coalesce(Agent.failed_logins, 0) + 1)
                  .execution_options(synchronize_session=False))
        failures = s.execute(select(Agent.failed_logins).where(Agent.id == agent.id)).scalar_one()
        if failures >= self.settings.lock_after:
            until = now + self.settings.lock_for
            s.execute(update(Agent).where(Agent.id == agent.id).values(failed_logins=0, locked_until=until)
                      .execution_options(synchronize_session=False))
            audit.record(s, "agent_locked", None, "agent", agent.username,
                               {"failures": failures, "until": until}, actor="console")

    def _address_wait(self, s, address: str, now: dt.datetime) -> int:
        """Seconds until an address may try again (0: now): once `address_limit` failures fall
        inside the window, it waits until the oldest of them leaves it."""
        window, limit = self.settings.address_window, self.settings.address_limit
        recent = s.execute(select(LoginFailure.at)
                           .where(LoginFailure.address == address, LoginFailure.at > now - window)
                           .order_by(LoginFailure.at.desc()).limit(limit)).scalars().all()
        if len(recent) < limit:
            return 0
        return max(1, math.ceil((recent[-1] + window - now).total_seconds()))

    @staticmethod
    def _failures_from(s, address: str, since: dt.datetime) -> int:
        return s.execute(select(func.count()).select_from(LoginFailure).where(
            LoginFailure.address == address, LoginFailure.at > since)).scalar_one()

    @staticmethod
    def _agent_view(agent: Agent, online: bool = False) -> AgentView:
        return agent_view(agent, online)
