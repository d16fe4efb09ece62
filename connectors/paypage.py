"""A stand-in for the bank's payment page, for development and the sandbox: open a payment link
from the bot (or a reminder's "Pay bill" button), see what it pays, press Pay. No money moves;
the card system posts the payment and uses the link up, exactly as the bank's gateway does through
the desk API (POST /webhooks/desk/v1/payment-links/use), so a second press is refused.

Configured in credentials.yml (never in credentials.production.yml, where CARDCARE_PAYMENT_BASE_URL
is the bank's own page) as `connectors.paypage.DemoPaymentPage`; served at /webhooks/pay/.
A plain HTML form: no script, the link's own fields only (amount, card's last 4 digits).
"""
from __future__ import annotations

import asyncio
import html
import logging
from typing import Any, Awaitable, Callable, Dict, Optional, Text
from urllib.parse import parse_qs, urlencode

from sanic import Blueprint, response
from sanic.request import Request
from sanic.response import HTTPResponse

from rasa.core.channels.channel import InputChannel, UserMessage
from cardsystem.errors import CardSystemError
from cardsystem.formatting import format_inr
from cardsystem.paylinks import InvalidPaymentLink
from connectors.feedback import HEADERS, STYLE
from connectors.feedback import page as feedback_page

logger = logging.getLogger(__name__)
REFUSED = {"used": (409, "This payment link was used already. Ask on WhatsApp for a new one."),
           "expired": (410, "This payment link has expired. Ask on WhatsApp for a new one."),
           "signature": (404, "This is not a payment link of ours."),
           "unreadable": (404, "This is not a payment link of ours.")}


NOTE = ('<p class="muted">CardCare demo payment page: no money moves. The bank\'s own page takes '
        'real payments.</p>')


def page(title: str, body: str, status: int = 200) -> HTTPResponse:
    return feedback_page(title, body + NOTE, status, style="/webhooks/pay/style.css")


class DemoPaymentPage(InputChannel):
    """See the module docstring."""

    @classmethod
    def name(cls) -> Text:
        return "pay"

    @classmethod
    def from_credentials(cls, credentials: Optional[Dict[Text, Any]]) -> "DemoPaymentPage":
        return cls()

    def __init__(self, system: Any = None) -> None:
        self.system = system

    def _system(self) -> Any:
        if self.system is None:
            from cardsystem.service import CardSystem

            self.system = CardSystem()
        return self.system

    def blueprint(self, on_new_message: Callable[[UserMessage], Awaitable[Any]]) -> Blueprint:
        bp = Blueprint(f"paypage_{id(self)}", __name__)

        def link_of(args: Dict[str, Any]) -> str:
            query = urlencode({"t": str(args.get("t") or "")[:2000], "s": str(args.get("s") or "")[:200]})
            return f"{self._system().settings.payment_base_url}?{query}"

        def refused(exc: InvalidPaymentLink) -> HTTPResponse:
            status, text = REFUSED.get(exc.reason, REFUSED["signature"])
            logger.info("payment link refused: %s", exc.reason)
            return page("Payment", f"<p>{html.escape(text)}</p>", status)

        @bp.route("/style.css", methods=["GET"])
        async def style(_: Request) -> HTTPResponse:
            return response.text(STYLE, content_type="text/css", headers=HEADERS)

        @bp.route("/card", methods=["GET"])
        async def show(request: Request) -> HTTPResponse:
            args = {k: request.args.get(k) for k in ("t", "s")}
            system = self._system()
            try:  # a used, stale or paid link is refused now, not after the customer presses Pay
                link = await asyncio.to_thread(system.check_payment_link, link_of(args))
            except InvalidPaymentLink as exc:
                return refused(exc)
            except CardSystemError as exc:
                return page("Payment", f"<p>{html.escape(str(exc))}</p>", 409)
            fields = {"a": link["amount_paise"], "k": link["kind"]}
            what = {"total": "the total due", "minimum": "the minimum due"}.get(fields.get("k"), "a part payment")
            hidden = "".join(f'<input type="hidden" name="{k}" value="{html.escape(v or "")}">' for k, v in args.items())
            return page(f"Pay {format_inr(int(fields['a']))}",
                        f"<p>{html.escape(what.capitalize())} on your CardCare credit card ending "
                        f"<b>{html.escape(link['card_last4'])}</b>.</p>"
                        f'<form method="post" action="/webhooks/pay/card">{hidden}'
                        f'<button type="submit">Pay {format_inr(int(fields["a"]))}</button></form>')

        @bp.route("/card", methods=["POST"])
        async def pay(request: Request) -> HTTPResponse:
            if request.headers.get("content-type", "").split(";")[0].strip().lower() != \
                    "application/x-www-form-urlencoded":
                return page("Payment", "<p>Please use the form.</p>", 415)
            fields = parse_qs((request.body or b"").decode("utf-8", "replace"), max_num_fields=5)
            args = {k: (fields.get(k) or [""])[0] for k in ("t", "s")}
            try:
                txn = await asyncio.to_thread(self._system().pay_with_link, link_of(args), "demo payment page")
            except InvalidPaymentLink as exc:
                return refused(exc)
            except CardSystemError as exc:  # nothing due now, or less than the link says
                return page("Payment", f"<p>{html.escape(str(exc))}</p>", 409)
            return page("Thank you", f"<p>We have received {format_inr(-txn.amount_paise)}. Reference "
                                     f"<b>{html.escape(txn.reference)}</b>. If you get our updates on WhatsApp, a confirmation "
                                     f"follows there.</p>")

        return bp
