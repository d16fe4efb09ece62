"""The customer's feedback page for a service request: rate it, comment, or escalate it (which
re-opens it one rung up the escalation ladder). Reached by the signed, expiring, single-use link
sent with a request's resolution (cardsystem.requests.feedback); served with the bot.

Configured in credentials.yml as `connectors.feedback.FeedbackPage`; served at
/webhooks/feedback/<token>. A plain HTML form: no script, no third-party anything, nothing about
the customer beyond the request's reference, kind and outcome.
"""
from __future__ import annotations

import asyncio
import html
import logging
from typing import Any, Awaitable, Callable, Dict, Optional, Text
from urllib.parse import parse_qs

from sanic import Blueprint, response
from sanic.request import Request
from sanic.response import HTTPResponse

from rasa.core.channels.channel import InputChannel, UserMessage
from cardsystem.errors import CardSystemError, NotFound
from cardsystem.requests.feedback import BadLink

logger = logging.getLogger(__name__)
HEADERS = {"Content-Security-Policy": "default-src 'none'; style-src 'self'; form-action 'self'; "
                                      "base-uri 'none'; frame-ancestors 'none'",
           "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Cache-Control": "no-store"}
STYLE = """body{font-family:Helvetica,Arial,sans-serif;max-width:480px;margin:24px auto;padding:0 16px;color:#1d2733}
h1{font-size:20px;color:#0b4f6c}fieldset{border:1px solid #dde;border-radius:6px;margin:12px 0}
label{display:block;margin:6px 0}textarea{width:100%;box-sizing:border-box}
button{background:#0b4f6c;color:#fff;border:0;padding:10px 16px;border-radius:6px;font-size:16px}
.error{color:#b00020}.muted{color:#667;font-size:13px}"""
STATUS_OF = {"invalid": 404, "expired": 410, "used": 409}
RATINGS = ((5, "Excellent"), (4, "Good"), (3, "Okay"), (2, "Poor"), (1, "Very poor"))


def page(title: str, body: str, status: int = 200, style: str = "/webhooks/feedback/style.css") -> HTTPResponse:
    """A small script-free page (the customer's feedback, the demo payment page)."""
    document = (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{html.escape(title)}</title>'
                f'<link rel="stylesheet" href="{html.escape(style)}"></head><body>'
                f'<h1>{html.escape(title)}</h1>{body}</body></html>')
    return response.html(document, status=status, headers=HEADERS)


def form(info: Dict[str, Any], problem: str = "") -> str:
    outcome = html.escape(info.get("resolution") or "")
    choices = "".join(f'<label><input type="radio" name="rating" value="{n}"> {n} - {w}</label>' for n, w in RATINGS)
    escalate = ("Not sorted? Escalate it to a senior colleague" if info.get("closed")
                else "Escalate it to a senior colleague")
    return (f'<p>{html.escape(info["label"])} request <b>{html.escape(info["reference"])}</b>'
            f'{": " + outcome if outcome else ""}</p>'
            f'{f"<p class=error>{html.escape(problem)}</p>" if problem else ""}'
            f'<form method="post"><fieldset><legend>How did we do?</legend>{choices}</fieldset>'
            f'<label>Anything to add? <textarea name="comment" rows="4" maxlength="1000"></textarea></label>'
            f'<label><input type="checkbox" name="escalate" value="yes"> {escalate}</label>'
            f'<button type="submit">Send</button></form>'
            f'<p class="muted">This link works once. Never share card numbers, PINs or OTPs here.</p>')


class FeedbackPage(InputChannel):
    """See the module docstring."""

    @classmethod
    def name(cls) -> Text:
        return "feedback"

    @classmethod
    def from_credentials(cls, credentials: Optional[Dict[Text, Any]]) -> "FeedbackPage":
        return cls()

    def __init__(self, desk: Any = None) -> None:
        self.desk = desk

    def _desk(self) -> Any:
        if self.desk is None:
            from cardsystem.requests.desk import ServiceDesk

            self.desk = ServiceDesk()
        return self.desk

    def blueprint(self, on_new_message: Callable[[UserMessage], Awaitable[Any]]) -> Blueprint:
        bp = Blueprint(f"feedback_{id(self)}", __name__)

        def refused(exc: CardSystemError) -> HTTPResponse:
            status = STATUS_OF.get(exc.code, 404) if isinstance(exc, BadLink) else 404
            logger.info("feedback link refused: %s", exc.code)
            return page("Feedback", f"<p>{html.escape(str(exc))}</p>", status)

        @bp.route("/style.css", methods=["GET"])
        async def style(_: Request) -> HTTPResponse:
            return response.text(STYLE, content_type="text/css", headers=HEADERS)

        @bp.route("/<token>", methods=["GET"])
        async def show(_: Request, token: str) -> HTTPResponse:
            try:
                info = await asyncio.to_thread(self._desk().feedback_page, token)
            except (BadLink, NotFound) as exc:
                return refused(exc)
            return page("Tell us how we did", form(info))

        @bp.route("/<token>", methods=["POST"])
        async def send(request: Request, token: str) -> HTTPResponse:
            if request.headers.get("content-type", "").split(";")[0].strip().lower() != \
                    "application/x-www-form-urlencoded":
                return page("Feedback", "<p>Please use the form.</p>", 415)
            fields = parse_qs((request.body or b"").decode("utf-8", "replace"), max_num_fields=10)
            rating_text = (fields.get("rating") or [""])[0]
            rating = int(rating_text) if rating_text.isdigit() else None
            comment = (fields.get("comment") or [""])[0]
            escalate = (fields.get("escalate") or [""])[0] == "yes"
            desk = self._desk()
            try:
                done = await asyncio.to_thread(desk.give_feedback, token, rating, comment, escalate)
            except (BadLink, NotFound) as exc:
                return refused(exc)
            except CardSystemError as exc:  # e.g. nothing chosen: the form again, with what to fix
                try:
                    info = await asyncio.to_thread(desk.feedback_page, token)
                except (BadLink, NotFound) as again:
                    return refused(again)
                return page("Tell us how we did", form(info, str(exc)), 400)
            extra = ("<p>We have re-opened your request with a senior colleague and will update you on WhatsApp.</p>"
                     if done["escalated"] else "")
            return page("Thank you", f"<p>{html.escape(done['message'])}</p>{extra}")

        return bp
