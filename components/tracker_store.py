"""Rasa's SQL tracker store, reading a conversation's recent turns instead of all of it.

    tracker_store:
      type: components.tracker_store.RecentTurnsSQLTrackerStore
      dialect: sqlite            # or postgresql, with url/port/db/username/password as for type: SQL
      db: var/tracker.db
      keep_turns: 20             # customer messages of the session read back (default 20)

Stock `SQLTrackerStore.retrieve` reads and replays every event of the current session, and
every later step of the turn pays for its length again: each policy featurizes the whole
tracker, every action call ships it to the action server. A customer's 200th message costs
several times their 5th. The policies look back `max_history` turns (4 and 5 here), the
actions at the current turn; so this store reads the last `keep_turns` customer messages of
the session with everything after them, and from before them only what still holds: the
session's opening events, the last value of each slot and the form that is active (all real
stored events, in their order). Saving appends what the turn added, as the stock store does.
Nothing is deleted: `retrieve_full_tracker` (`rasa export`, the HTTP API with
`include_events=ALL`) still reads every event of every session.

Table and columns are the stock store's (`events`), so a database written by `type: SQL` is
read by this one and back. An index on (sender_id, type_name, action_name) is added.
On SQLite the project's engine is used (cardsystem.db.get_engine): connections pooled and WAL
set once (SQLAlchemy 1.4 would reopen the file for every read and write), so Rasa workers on
one box can share the file, which only the service's user may read.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Dict, Iterator, List, Optional, Text

import sqlalchemy as sa
import ujson  # (Rasa's and Sanic's own dependency)

from cardsystem.db import get_engine
from rasa.core.tracker_store import SQLTrackerStore
from rasa.shared.nlu.constants import INTENT_NAME_KEY
from rasa.shared.core.events import ActionExecuted, SessionStarted, UserUttered
from rasa.shared.core.trackers import DialogueStateTracker

logger = logging.getLogger(__name__)


def decode(data: Text) -> Dict[Text, Any]:
    """An event as json.loads reads it, 1.4x as fast (a tracker read decodes 100-200 events: a
    tenth of a worker's CPU in py-spy); json.loads for anything ujson refuses (an integer past 64 bits)."""
    try:
        return ujson.loads(data)
    except ValueError:
        return json.loads(data)


DEFAULT_KEEP_TURNS = 20
# what a row of the state read is (never an event's type name: those are the opening's rows)
_RESET, _SLOT, _LOOP, _INTERRUPTED = "(reset)", "(slot)", "(loop)", "(interrupted)"
_STORED = "_cardcare_stored_events"  # set on a retrieved tracker: how many of its events are in the table


class RecentTurnsSQLTrackerStore(SQLTrackerStore):
    """SQLTrackerStore whose `retrieve` reads the last `keep_turns` turns of the session."""

    def __init__(self, domain: Any = None, dialect: Text = "sqlite", host: Optional[Text] = None,
                 port: Optional[int] = None, db: Text = "rasa.db", username: Optional[Text] = None,
                 password: Optional[Text] = None, event_broker: Any = None, login_db: Optional[Text] = None,
                 query: Optional[Dict] = None, keep_turns: Any = DEFAULT_KEEP_TURNS, **kwargs: Any) -> None:
        super().__init__(domain, dialect, host, port, db, username, password, event_broker, login_db, query,
                         **kwargs)
        self.keep_turns = max(1, int(keep_turns))
        if self.engine.dialect.name == "sqlite" and db not in ("", ":memory:"):
            url = str(self.engine.url)
            self.engine.dispose()
            self.engine = get_engine(url)  # the project's: pooled, WAL set once per connection, owner-only file
            self.sessionmaker = sa.orm.session.sessionmaker(bind=self.engine)
        with self.engine.begin() as connection:  # (not on Rasa's table object: its create_all stays as it was)
            connection.exec_driver_sql("CREATE INDEX IF NOT EXISTS ix_events_sender_type_name "
                                       "ON events (sender_id, type_name, action_name)")

    def _statements(self, in_session: bool) -> Dict[Text, Any]:
        """The reads of `retrieve`, built once per store (SQLAlchemy then skips building them and
        computing their cache keys on every turn): `in_session` limits them to events from the
        session's start (:start) on. Three round trips for a long session, two for a short one."""
        key = "_cardcare_statements_in_session" if in_session else "_cardcare_statements"
        built = getattr(self, key, None)
        if built is not None:
            return built
        t = self.SQLEvent.__table__
        sid = t.c.sender_id == sa.bindparam("sid")
        of = [sid] + ([t.c.timestamp >= sa.bindparam("start")] if in_session else [])
        before = of + [t.c.id < sa.bindparam("cut")]
        # where the session starts, and where its last `keep_turns` customer messages start
        start = sa.select(sa.func.max(t.c.timestamp)).where(sid, t.c.type_name == SessionStarted.type_name) \
            .scalar_subquery()
        cut = sa.select(t.c.id).where(sid, sa.or_(start.is_(None), t.c.timestamp >= start),
                                      t.c.type_name == UserUttered.type_name) \
            .order_by(t.c.id.desc()).offset(self.keep_turns - 1).limit(1).scalar_subquery()
        # before the cut, what may still hold: the last restart, each slot's last setting, the last
        # form activation and the form's interruptions (`_recent_events` keeps those after the restart
        # and the activation: a bound that comes from a subquery would lead PostgreSQL's planner to
        # scan the primary key's index over every conversation), and the session's opening events
        def tagged(tag: Text) -> Any:
            return sa.literal_column(f"'{tag}'")

        head = sa.select(t.c.id, t.c.type_name, t.c.action_name).where(*before).order_by(t.c.id).limit(8).subquery()
        built = {
            "where": sa.select(start, cut),
            "all": sa.select(t.c.data).where(*of).order_by(t.c.id),
            "kept": sa.union_all(
                sa.select(sa.func.max(t.c.id), tagged(_RESET), tagged("")).where(
                    *before, t.c.type_name.in_(("restart", "reset_slots"))),
                sa.select(sa.func.max(t.c.id), tagged(_SLOT), tagged("")).where(*before, t.c.type_name == "slot")
                .group_by(t.c.action_name),
                sa.select(sa.func.max(t.c.id), tagged(_LOOP), tagged("")).where(*before, t.c.type_name == "active_loop"),
                sa.select(t.c.id, tagged(_INTERRUPTED), tagged("")).where(*before, t.c.type_name == "loop_interrupted"),
                sa.select(head.c.id, head.c.type_name, head.c.action_name)),
            "events": sa.union_all(sa.select(t.c.id, t.c.data).where(t.c.id.in_(sa.bindparam("ids", expanding=True))),
                                   sa.select(t.c.id, t.c.data).where(*of, t.c.id >= sa.bindparam("cut")))
            .order_by("id"),
        }
        setattr(self, key, built)
        return built

    async def retrieve(self, sender_id: Text) -> Optional[DialogueStateTracker]:
        with self.session_scope() as session:
            events = self._recent_events(session, sender_id)
        if not self.domain or not events:
            return None
        tracker = DialogueStateTracker.from_dict(sender_id, events, self.domain.slots)
        setattr(tracker, _STORED, len(tracker.events))
        return tracker

    def _recent_events(self, session: Any, sender_id: Text) -> List[Dict[Text, Any]]:
        start, cut = session.execute(self._statements(False)["where"], {"sid": sender_id}).one()
        q = self._statements(start is not None)
        at = {"sid": sender_id, "start": start} if start is not None else {"sid": sender_id}
        if cut is None:  # a short session: all of it, as the stock store reads it
            return [decode(data) for data in session.execute(q["all"], at).scalars()]
        found: Dict[Text, List[int]] = {_RESET: [], _SLOT: [], _LOOP: [], _INTERRUPTED: []}
        opening = []
        for row_id, tag, action_name in session.execute(q["kept"], {**at, "cut": cut}):
            if tag in found:
                if row_id is not None:
                    found[tag].append(row_id)
            else:
                opening.append((row_id, tag, action_name))
        reset = found[_RESET][0] if found[_RESET] else -1
        kept = set(found[_RESET]) | {i for i in found[_SLOT] + found[_LOOP] if i > reset}
        if found[_LOOP] and found[_LOOP][0] > reset:
            kept.update(i for i in found[_INTERRUPTED] if i > found[_LOOP][0])
        for row_id, type_name, action_name in sorted(opening):
            if type_name == UserUttered.type_name:  # the session's opening, to its first action_listen
                break
            kept.add(row_id)
            if type_name == ActionExecuted.type_name and action_name == "action_listen":
                break
        return [decode(data) for _, data in session.execute(q["events"], {**at, "cut": cut, "ids": sorted(kept)})]

    async def save(self, tracker: DialogueStateTracker) -> None:
        """As the stock store saves (the events the turn added, one row each), in one statement."""
        await self.stream_events(tracker)
        with self.session_scope() as session:
            rows = []
            for event in self._additional_events(session, tracker):
                data = event.as_dict()
                rows.append({"sender_id": tracker.sender_id, "type_name": event.type_name,
                             "timestamp": data.get("timestamp"), "action_name": data.get("name"),
                             "intent_name": data.get("parse_data", {}).get("intent", {}).get(INTENT_NAME_KEY),
                             "data": json.dumps(data)})
            if rows:
                session.execute(self.SQLEvent.__table__.insert(), rows)
            session.commit()

    def _additional_events(self, session: Any, tracker: DialogueStateTracker) -> Iterator:
        """What the turn added: the events after those this store read or saved (stock counting
        for a tracker it did not read: a new conversation's first save, `rasa interactive`, a test;
        its next saves then append without counting again: a new customer's first turn saved
        twice, and counted twice, a tenth of a worker's CPU in a run of mostly new customers)."""
        stored = getattr(tracker, _STORED, None)
        if stored is None or stored > len(tracker.events):
            added = list(super()._additional_events(session, tracker))
        else:
            added = list(tracker.events)[stored:]
        setattr(tracker, _STORED, len(tracker.events))  # (saved twice, written once)
        yield from added
