"""E-mail notices to customers over SMTP (standard library smtplib), beside the WhatsApp channel.

    python -m cardsystem.requests.mailer [--once]      (CARDCARE_SMTP_URL, CARDCARE_MAIL_FROM)

Exit codes: 0 done (or e-mail off), 1 a --once pass failed (database), 2 bad settings.

Each pass takes the due e-mail notices (cardsystem.requests.notices) and sends each as a plain-text
UTF-8 message. A notice the server takes is marked sent; one it cannot take now (no connection,
timeout, a 4xx reply) is tried again later; one no retry can mend (a malformed address, a 5xx
refusal of the recipient or the message) is marked failed for good. The Message-ID comes from the
notice's key, so a message sent again after a crash is recognisably the same message. Logs show
addresses masked (a***@example.in) and never the SMTP password.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import ipaddress
import logging
import re
import signal
import smtplib
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import default as default_policy
from email.utils import formatdate, parseaddr
from typing import Dict, List, Optional
from urllib.parse import unquote, urlsplit

from cardsystem.requests.notices import EMAIL, MAX_ATTEMPTS, Notice, NoticeBox

logger = logging.getLogger(__name__)

DEFAULT_SUBJECT = "Message from CardCare Bank"
FALLBACK_DOMAIN = "cardcare.example"
FOOTER = ("This mailbox is not monitored, so please do not reply to this e-mail. "
          "To reply, message CardCare Bank on WhatsApp.")
LINK_NOTE = "This link works for a limited time; for a new one, message us on WhatsApp."
POLL_SECONDS = 10
PORTS = {"plain": 25, "tls": 465, "starttls": 587}
MODES = {"smtp": "plain", "smtps": "tls", "smtp+starttls": "starttls"}
# 7bit: non-ASCII bodies go base64 or quoted-printable, so a relay without 8BITMIME takes them too
_POLICY = default_policy.clone(cte_type="7bit")
_DOMAIN_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+")
# characters no address we send to may hold: whitespace and controls (header injection) and the
# punctuation of address lists and display names
_BAD_ADDRESS_CHARS = re.compile(r"[\s\x00-\x1f\x7f<>(),;:\\\"\[\]]")


# -- the SMTP URL -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SmtpTarget:
    """Where and how to hand mail over; the password is left out of repr (logs, tracebacks)."""

    host: str
    port: int
    mode: str                                   # plain | tls (smtps) | starttls (smtp+starttls)
    username: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)

    def describe(self) -> str:
        """host:port and mode, fit for a log line."""
        return f"{self.mode} {self.host}:{self.port}" + (f" as {self.username}" if self.username else "")


def parse_smtp_url(url: str) -> SmtpTarget:
    """smtp[s|+starttls]://[user:password@]host[:port] → SmtpTarget; ValueError says what is wrong
    without repeating the URL (it may hold the password)."""
    try:
        parts = urlsplit((url or "").strip())
    except ValueError:
        raise ValueError("SMTP URL is malformed (expected smtp://[user:password@]host[:port])") from None
    mode = MODES.get(parts.scheme.lower())
    if mode is None:
        raise ValueError("SMTP URL must start with smtp://, smtps:// or smtp+starttls://")
    if not parts.hostname:
        raise ValueError("SMTP URL has no host (expected smtp://[user:password@]host[:port])")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("SMTP URL must not have a path, query or fragment after host:port")
    username, password = _credentials(parts.username, parts.password)
    return SmtpTarget(host=parts.hostname, port=_port(parts, mode), mode=mode, username=username, password=password)


def _port(parts, mode: str) -> int:
    try:
        port = parts.port   # raises on a non-number or out of range
    except ValueError:
        raise ValueError("SMTP URL has an invalid port (a number from 1 to 65535)") from None
    if port == 0:
        raise ValueError("SMTP URL has an invalid port (a number from 1 to 65535)")
    return port or PORTS[mode]


def _credentials(raw_user: Optional[str], raw_password: Optional[str]):
    """Both or neither: AUTH needs the two, and half of them is a typo worth stopping at."""
    username = unquote(raw_user) if raw_user else None
    password = unquote(raw_password) if raw_password else None
    if bool(username) != bool(password):
        raise ValueError("SMTP URL needs both a user name and a password, or neither")
    return username, password


# -- addresses --------------------------------------------------------------------------------------
def mask_address(address: str) -> str:
    """a***@example.in: enough to tell customers apart in a log, not enough to write to them."""
    local, at, domain = (address or "").rpartition("@")
    if not at or not local or not _DOMAIN_RE.fullmatch(domain):
        return "***"
    return f"{local[0]}***@{domain}" if local[0].isalnum() else f"***@{domain}"


def address_problem(address: str) -> Optional[str]:
    """Why `address` cannot be sent to (CR/LF, not exactly one '@', ...), or None when it can."""
    if not address:
        return "no address"
    if "\r" in address or "\n" in address:
        return "address holds a line break"
    if address.count("@") != 1:
        return "address must have exactly one '@'"
    local, _, domain = address.partition("@")
    if not local or not domain:
        return "address has an empty part before or after '@'"
    if _BAD_ADDRESS_CHARS.search(address):
        return "address holds spaces, control characters or punctuation not allowed in an address"
    if len(address) > 254:
        return "address is longer than 254 characters"
    return None


def _masked(text: str, address: str) -> str:
    """`text` (an SMTP reply, an exception) with the customer's address masked."""
    if not address:
        return text
    # servers may change the case of what they echo
    return re.sub(re.escape(address), mask_address(address), text, flags=re.IGNORECASE)


# -- failures ---------------------------------------------------------------------------------------
class DeliveryFailed(Exception):
    """A notice was not delivered; the message is safe to log and to store."""


class PermanentFailure(DeliveryFailed):
    """No retry will deliver it: a malformed address, a 5xx refusal."""


class TransientFailure(DeliveryFailed):
    """Worth another try later. `outage`: the server itself could not be used (down, TLS, AUTH),
    so the other notices of this pass need not try it again."""

    def __init__(self, message: str, outage: bool = False) -> None:
        super().__init__(message)
        self.outage = outage


def _reply_text(code: int, reply) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return f"{code} {text}".strip()


# -- the mailer -------------------------------------------------------------------------------------
class Mailer:
    """Sends one notice per SMTP connection (notices are few; a fresh connection cannot be left
    half-broken by the previous message)."""

    def __init__(self, smtp_url: str, mail_from: str, timeout: float = 10,
                 tls_context: Optional[ssl.SSLContext] = None) -> None:
        self.target = parse_smtp_url(smtp_url)
        self.mail_from = mail_from
        self.sender = parseaddr(mail_from)[1]
        if address_problem(self.sender):
            raise ValueError(f"mail_from is not a usable address: {address_problem(self.sender)}")
        domain = self.sender.partition("@")[2]
        self.domain = domain if _DOMAIN_RE.fullmatch(domain) else FALLBACK_DOMAIN
        self.timeout = timeout
        # a bank may run its relay under a private CA: the caller can pass a context that trusts it
        self.tls_context = tls_context or ssl.create_default_context()
        if self.target.username and self.target.mode == "plain" and not _is_loopback(self.target.host):
            logger.warning("SMTP credentials for %s go without TLS: use smtps:// or smtp+starttls://",
                           self.target.describe())

    def message_id(self, key: str) -> str:
        """Stable per notice key: a resend after a crash carries the same Message-ID."""
        return f"<{hashlib.sha256(key.encode('utf-8')).hexdigest()[:32]}@{self.domain}>"

    def compose(self, notice: Notice) -> EmailMessage:
        """The plain-text message for `notice` (its address already checked)."""
        message = EmailMessage(policy=_POLICY)
        message["From"] = self.mail_from
        message["To"] = notice.address
        # a subject is one line: a stray line break would end the header (and is refused by email)
        message["Subject"] = " ".join((notice.subject or DEFAULT_SUBJECT).split()) or DEFAULT_SUBJECT
        message["Date"] = formatdate(usegmt=True)
        message["Message-ID"] = self.message_id(notice.key)
        message["Auto-Submitted"] = "auto-generated"   # RFC 3834: out-of-office robots do not answer it
        message.set_content(_body(notice), charset="utf-8")
        return message

    def send(self, notice: Notice) -> None:
        """Hand `notice` to the SMTP server; raises PermanentFailure or TransientFailure."""
        problem = address_problem(notice.address)
        if problem:
            raise PermanentFailure(problem)
        message = self.compose(notice)
        smtp = self._connect()
        try:
            self._hand_over(smtp, message, notice.address)
        finally:
            _close(smtp)

    def _connect(self) -> smtplib.SMTP:
        """An open, greeted (TLS, logged-in where asked) connection, or TransientFailure(outage)."""
        target, smtp = self.target, None
        try:
            if target.mode == "tls":
                smtp = smtplib.SMTP_SSL(target.host, target.port, timeout=self.timeout, context=self.tls_context)
            else:
                smtp = smtplib.SMTP(target.host, target.port, timeout=self.timeout)
            smtp.ehlo()
            if target.mode == "starttls":
                smtp.starttls(context=self.tls_context)   # refuses (SMTPNotSupportedError) rather than go on in clear
                smtp.ehlo()
            if target.username:
                smtp.login(target.username, target.password or "")
            return smtp
        except (smtplib.SMTPException, OSError) as error:
            if smtp is not None:
                _close(smtp)
            raise TransientFailure(f"SMTP server {target.host}:{target.port} unusable: {_describe(error)}",
                                   outage=True) from None

    def _hand_over(self, smtp: smtplib.SMTP, message: EmailMessage, address: str) -> None:
        """MAIL, RCPT, DATA; smtplib's errors sorted into permanent and transient."""
        try:
            smtp.send_message(message, from_addr=self.sender, to_addrs=[address])
        except smtplib.SMTPRecipientsRefused as error:
            code, reply = next(iter(error.recipients.values()), (0, b""))
            raise _by_code(code, "recipient refused: " + _masked(_reply_text(code, reply), address)) from None
        except smtplib.SMTPSenderRefused as error:
            # the server refuses our From: a setup problem, not this notice's
            raise TransientFailure(f"sender refused: {_reply_text(error.smtp_code, error.smtp_error)}",
                                   outage=True) from None
        except smtplib.SMTPDataError as error:
            raise _by_code(error.smtp_code, "message refused: " + _masked(
                _reply_text(error.smtp_code, error.smtp_error), address)) from None
        except smtplib.SMTPNotSupportedError as error:
            # e.g. a non-ASCII address to a server without SMTPUTF8: it will not support it later either
            raise PermanentFailure(f"not supported by the server: {_masked(str(error), address)}") from None
        except smtplib.SMTPResponseException as error:
            raise _by_code(error.smtp_code, _masked(_reply_text(error.smtp_code, error.smtp_error), address)) from None
        except (smtplib.SMTPException, OSError) as error:
            # disconnected or timed out mid-message: the message may or may not have arrived; the
            # same Message-ID lets the recipient's side recognise a second copy
            raise TransientFailure(_masked(_describe(error), address)) from None


def _by_code(code: int, text: str) -> DeliveryFailed:
    """5xx: permanent, except 530 (authentication required: our setup, not the address)."""
    if 500 <= code < 600 and code != 530:
        return PermanentFailure(text)
    return TransientFailure(text, outage=code == 530)


def _body(notice: Notice) -> str:
    """The notice's text, its document's link (e-mail carries no attachment) and the footer."""
    parts = [notice.text.rstrip()]
    document = notice.document or {}
    if document.get("link"):
        label = document.get("caption") or document.get("filename") or "Document"
        # the bank's file links expire (cardsystem.files), and an e-mail may be read days later
        parts.append(f"{label}: {document['link']}\n{LINK_NOTE}")
    parts.append("-- \n" + FOOTER)   # "-- " is the signature separator mail programs know
    return "\n\n".join(parts) + "\n"


def _describe(error: BaseException) -> str:
    """An exception in one line, without a password: smtplib never puts it into its errors, and
    SmtpTarget keeps it out of repr."""
    if isinstance(error, smtplib.SMTPResponseException):
        return _reply_text(error.smtp_code, error.smtp_error)
    text = str(error) or type(error).__name__
    return " ".join(f"{type(error).__name__}: {text}".split())


def _close(smtp: smtplib.SMTP) -> None:
    """QUIT politely; a server already gone is only closed (the message's fate is decided)."""
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        smtp.close()


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


# -- a pass -----------------------------------------------------------------------------------------
def deliver_email_notices(box: NoticeBox, mailer: Mailer, limit: int = 50,
                          now: Optional[dt.datetime] = None) -> Dict[str, int]:
    """Send the due e-mail notices once; {"sent", "retry", "failed"} counts. `now` (naive UTC) is
    the moment they are taken at (tests)."""
    counts = {"sent": 0, "retry": 0, "failed": 0}
    outage: Optional[str] = None
    for notice in box.take(EMAIL, limit, now):
        if outage:   # the server is unusable: the rest wait for the next pass, no connection try each
            _retry(box, notice, outage, outage=True)
            counts["retry"] += 1
            continue
        outcome, outage = _deliver_one(box, mailer, notice)
        counts[outcome] += 1
    if any(counts.values()):
        logger.info("e-mail pass: %(sent)s sent, %(retry)s to retry, %(failed)s failed", counts)
    return counts


def _deliver_one(box: NoticeBox, mailer: Mailer, notice: Notice):
    """Send and settle one notice: ("sent" | "retry" | "failed", the outage to spare the rest)."""
    masked = mask_address(notice.address)
    try:
        mailer.send(notice)
    except PermanentFailure as error:
        logger.warning("e-mail notice %s to %s failed for good: %s", notice.id, masked, error)
        box.failed_for_good(notice.id, str(error))
        return "failed", None
    except TransientFailure as error:
        _retry(box, notice, str(error), outage=error.outage)
        return "retry", str(error) if error.outage else None
    except Exception as error:   # a bug must not stop the other notices; the notice counts a try
        text = _masked(_describe(error), notice.address)
        logger.error("e-mail notice %s to %s: unexpected %s", notice.id, masked, text)
        _retry(box, notice, text, outage=False)
        return "retry", None
    box.sent(notice.id)
    logger.info("e-mail notice %s sent to %s", notice.id, masked)
    return "sent", None


def _retry(box: NoticeBox, notice: Notice, error: str, outage: bool) -> None:
    """Leave `notice` to a later pass. An outage is not the notice's fault: it does not count
    towards MAX_ATTEMPTS, so a server down for an hour loses no notice."""
    attempts = min(notice.attempts, MAX_ATTEMPTS - 1) if outage else notice.attempts
    logger.warning("e-mail notice %s to %s not sent (try %s), retried later: %s",
                   notice.id, mask_address(notice.address), notice.attempts, error)
    box.failed(notice.id, error, attempts)


# -- the command ------------------------------------------------------------------------------------
def main(argv: Optional[List[str]] = None) -> int:
    """Deliver once (--once) or every POLL_SECONDS until Ctrl-C; 0 when e-mail is off."""
    parser = argparse.ArgumentParser(prog="python -m cardsystem.requests.mailer",
                                     description="Send customers' e-mail notices over SMTP.")
    parser.add_argument("--once", action="store_true", help="one pass, then exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from cardsystem.config import Settings

    settings = Settings.from_env()
    if not settings.smtp_url:
        print("E-mail is off: CARDCARE_SMTP_URL is not set.")
        return 0
    try:
        mailer = Mailer(settings.smtp_url, settings.mail_from)
    except ValueError as error:
        print(f"mailer: {error}", file=sys.stderr)
        return 2
    box = NoticeBox(settings.db_url)
    logger.info("mailer: sending e-mail notices through %s", mailer.target.describe())
    if args.once:
        try:
            deliver_email_notices(box, mailer)
        except Exception as error:   # the database is away or has no notices table yet
            print(f"mailer: the pass failed: {_describe(error)[:300]}", file=sys.stderr)
            return 1
        return 0
    return _loop(box, mailer)


def _loop(box: NoticeBox, mailer: Mailer) -> int:
    """A pass every POLL_SECONDS; a failed pass (database away) is logged and the next one tried."""
    _stop_on_sigterm()
    try:
        while True:
            try:
                deliver_email_notices(box, mailer)
            except Exception as error:   # the worker outlives a database hiccup
                logger.error("e-mail pass failed: %s", _describe(error)[:300])
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        logger.info("mailer stopped")
        return 0


def _stop_on_sigterm() -> None:
    """A service manager's stop ends the loop as Ctrl-C does (a notice mid-send is taken again
    after CLAIM_SECONDS, with the same Message-ID)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
