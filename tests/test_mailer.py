"""The mailer: SMTP URLs, the message it writes, and passes against a local SMTP sink (aiosmtpd)
that takes, refuses, or is not there; STARTTLS, implicit TLS and AUTH with a throwaway certificate."""
from __future__ import annotations

import datetime as dt
import email
import hashlib
import ipaddress
import logging
import ssl
from contextlib import contextmanager
from email.policy import default as default_policy
from typing import Iterator, List, Optional

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from sqlalchemy import select

from cardsystem.db import session_scope
from cardsystem.models import Customer, CustomerNotice
from cardsystem.requests import mailer as mailer_module
from cardsystem.requests import notices
from cardsystem.requests.mailer import (
    FOOTER, Mailer, PermanentFailure, SmtpTarget, address_problem, deliver_email_notices, mask_address,
    parse_smtp_url,
)
from cardsystem.requests.notices import Notice, NoticeBox
from tests.conftest import ONE_CARD
from tests.servers import free_port

FROM = "CardCare Bank <noreply@mail.cardcare.example>"
SUBJECT = "आपका अनुरोध SR-1001 / Your request SR-1001"
TEXT = "Namaste! ₹1,250.00 का रिफंड आपके कार्ड में जमा हो गया है।\nRefund of ₹1,250.00 credited."
LATER = dt.timedelta(seconds=notices.CLAIM_SECONDS + 1)   # a retried notice is due again after CLAIM_SECONDS
PASSWORD = "s3cr:et/p@ss%"
USER = "bot@cardcare.example"
URL_PASSWORD = "s3cr%3Aet%2Fp%40ss%25"


# -- a local SMTP sink -------------------------------------------------------------------------------
class Sink:
    """Keeps what it is given; `refuse_rcpt` / `refuse_data` make it answer with that reply."""

    def __init__(self, refuse_rcpt: Optional[str] = None, refuse_data: Optional[str] = None) -> None:
        self.refuse_rcpt, self.refuse_data = refuse_rcpt, refuse_data
        self.received: List[dict] = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.refuse_rcpt:
            return self.refuse_rcpt
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.refuse_data:
            return self.refuse_data
        self.received.append({"mail_from": envelope.mail_from, "rcpt_tos": list(envelope.rcpt_tos),
                              "message": email.message_from_bytes(envelope.content, policy=default_policy),
                              "tls": server.transport.get_extra_info("ssl_object") is not None,
                              "user": session.auth_data if session.authenticated else None})
        return "250 Message accepted for delivery"


@contextmanager
def running_sink(sink: Sink, port: Optional[int] = None, **smtp_options) -> Iterator[int]:
    port = port or free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port, ready_timeout=5, **smtp_options)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


def check_login(server, session, envelope, mechanism, auth_data):
    ok = auth_data.login.decode() == USER and auth_data.password.decode() == PASSWORD
    # handled=False: aiosmtpd answers a failure with 535 itself
    return AuthResult(success=ok, handled=False, auth_data=auth_data.login.decode() if ok else None)


# -- helpers ---------------------------------------------------------------------------------------
def queue_email(system, key: str, subject: Optional[str] = SUBJECT, text: str = TEXT, address: Optional[str] = None,
                document: Optional[dict] = None) -> str:
    """Queue an e-mail notice for the one-card customer (optionally at another address); its key."""
    view = system.find_customer(ONE_CARD)
    with session_scope(system.engine) as s:
        customer = s.get(Customer, view.id)
        if address is not None:
            customer.email = address
        notices.queue(s, customer, key, text, "SR-1001", subject, document=document, email=True, whatsapp=False)
    return f"{key}:email"


def row(system, key: str) -> CustomerNotice:
    with session_scope(system.engine) as s:
        return s.execute(select(CustomerNotice).where(CustomerNotice.key == key)).scalar_one()


def later() -> dt.datetime:
    return notices.utcnow() + LATER


@pytest.fixture
def box(system) -> NoticeBox:
    return NoticeBox(engine=system.engine)


@pytest.fixture
def address(system) -> str:
    return system.find_customer(ONE_CARD).email


# -- URLs ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("url, expected", [
    ("smtp://mail.example.in", SmtpTarget("mail.example.in", 25, "plain")),
    ("smtp://127.0.0.1:2525", SmtpTarget("127.0.0.1", 2525, "plain")),
    ("SMTP://Relay.Example.IN:26/", SmtpTarget("relay.example.in", 26, "plain")),
    ("smtps://mail.example.in", SmtpTarget("mail.example.in", 465, "tls")),
    ("smtp+starttls://mail.example.in", SmtpTarget("mail.example.in", 587, "starttls")),
    (f"smtp://bot%40cardcare.example:{URL_PASSWORD}@relay:2525", SmtpTarget("relay", 2525, "plain", USER, PASSWORD)),
    (f"smtps://bot%40cardcare.example:{URL_PASSWORD}@relay", SmtpTarget("relay", 465, "tls", USER, PASSWORD)),
    (f"smtp+starttls://bot%40cardcare.example:{URL_PASSWORD}@[::1]:1587",
     SmtpTarget("::1", 1587, "starttls", USER, PASSWORD)),
])
def test_smtp_urls_of_every_form(url, expected):
    assert parse_smtp_url(url) == expected


@pytest.mark.parametrize("url, says", [
    ("", "must start with"), ("mail.example.in:25", "must start with"), ("http://mail.example.in", "must start with"),
    ("smtp://", "no host"), ("smtp://:hunter2@", "no host"), ("smtp://host:notaport", "invalid port"),
    ("smtp://host:0", "invalid port"), ("smtp://host:70000", "invalid port"),
    ("smtp://user@host", "both a user name and a password"), ("smtp://:hunter2@host", "both a user name"),
    ("smtp://user:hunter2@host/inbox", "path, query or fragment"), ("smtp://host?tls=1", "path, query"),
])
def test_bad_smtp_urls_say_what_is_wrong_without_the_password(url, says):
    with pytest.raises(ValueError) as raised:
        parse_smtp_url(url)
    assert says in str(raised.value) and "hunter2" not in str(raised.value)


def test_the_password_stays_out_of_repr():
    target = parse_smtp_url(f"smtps://bot:{URL_PASSWORD}@relay")
    assert target.password == PASSWORD and "s3cr" not in repr(target) and "s3cr" not in target.describe()


# -- addresses and the message ---------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["", "ria.sharma.example.in", "ria@sharma@example.in", "ria@example.in\n",
                                 "ria@example.in\r\nBcc: all@example.in", "ria @example.in", "@example.in",
                                 "ria@", "Ria <ria@example.in>", "ria@example.in,eve@example.in"])
def test_addresses_that_are_never_sent_to(bad):
    assert address_problem(bad)


def test_masked_addresses():
    assert mask_address("ria.sharma001@example.in") == "r***@example.in"
    assert mask_address("not-an-address") == "***" and mask_address("ria@evil\nline") == "***"


def test_the_message_carries_a_stable_id_the_link_and_the_footer():
    mailer = Mailer("smtp://127.0.0.1:1", FROM)
    notice = Notice(7, "SR-1001:12:email", "email", "ria@example.in", "SR-1001", None, "Your statement is ready.",
                    {"link": "https://files.cardcare.example/s/abc", "filename": "Statement.pdf", "caption": "Statement"}, 1)
    message = mailer.compose(notice)
    digest = hashlib.sha256(b"SR-1001:12:email").hexdigest()[:32]
    assert message["Message-ID"] == f"<{digest}@mail.cardcare.example>" == mailer.compose(notice)["Message-ID"]
    assert message["Subject"] == "Message from CardCare Bank" and message["Date"]
    body = message.get_content()
    assert "Statement: https://files.cardcare.example/s/abc\n" in body and body.rstrip().endswith(FOOTER)
    assert not message.is_multipart()


# -- passes against the sink -----------------------------------------------------------------------
def test_a_notice_arrives_once_with_its_unicode_text(system, box, address):
    key = queue_email(system, "SR-1001:1")
    sink = Sink()
    with running_sink(sink) as port:
        mailer = Mailer(f"smtp://127.0.0.1:{port}", FROM)
        assert deliver_email_notices(box, mailer) == {"sent": 1, "retry": 0, "failed": 0}
        assert deliver_email_notices(box, mailer) == {"sent": 0, "retry": 0, "failed": 0}
        assert deliver_email_notices(box, mailer, now=later()) == {"sent": 0, "retry": 0, "failed": 0}
    assert len(sink.received) == 1
    got = sink.received[0]
    message = got["message"]
    assert got["rcpt_tos"] == [address] and got["mail_from"] == "noreply@mail.cardcare.example"
    assert message["To"] == address and message["Subject"] == SUBJECT and message["From"] == FROM
    assert message["Message-ID"] == f"<{hashlib.sha256(key.encode()).hexdigest()[:32]}@mail.cardcare.example>"
    body = message.get_content()
    assert message.get_content_type() == "text/plain" and message.get_content_charset() == "utf-8"
    assert body.startswith(TEXT) and "₹1,250.00 का रिफंड" in body and FOOTER in body
    stored = row(system, key)
    assert stored.state == "sent" and stored.sent_at is not None and stored.attempts == 1


def test_smtp_down_leaves_the_notice_to_retry_and_it_goes_out_when_the_server_is_back(system, box, address, caplog):
    first = queue_email(system, "SR-1001:2")
    second = queue_email(system, "SR-1001:3", subject="Second")
    port = free_port()   # nothing listens there yet
    mailer = Mailer(f"smtp://bot%40cardcare.example:{URL_PASSWORD}@127.0.0.1:{port}", FROM, timeout=2)
    with caplog.at_level(logging.DEBUG):
        assert deliver_email_notices(box, mailer) == {"sent": 0, "retry": 2, "failed": 0}
    for key in (first, second):
        stored = row(system, key)
        assert stored.state == "sending" and "unusable" in stored.error
    assert address not in ours(caplog) and "s3cr" not in ours(caplog) and mask_address(address) in ours(caplog)
    assert deliver_email_notices(box, mailer) == {"sent": 0, "retry": 0, "failed": 0}   # not due again yet

    sink = Sink()
    with running_sink(sink, port, authenticator=check_login, auth_require_tls=False):
        assert deliver_email_notices(box, mailer, now=later()) == {"sent": 2, "retry": 0, "failed": 0}
    assert [r["message"]["Subject"] for r in sink.received] == [SUBJECT, "Second"]
    assert sink.received[0]["user"] == USER                       # AUTH with the URL-decoded password
    assert row(system, first).state == row(system, second).state == "sent"


def test_a_long_outage_does_not_use_up_the_notice(system, box):
    key = queue_email(system, "SR-1001:4")
    mailer = Mailer(f"smtp://127.0.0.1:{free_port()}", FROM, timeout=2)
    moment = notices.utcnow()
    for _ in range(notices.MAX_ATTEMPTS + 2):
        moment += LATER
        assert deliver_email_notices(box, mailer, now=moment)["retry"] == 1
    assert row(system, key).state == "sending"                     # still waiting for the server


def ours(caplog) -> str:
    """What this project logged (the sink's own log shows the envelope in full)."""
    return "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("cardsystem"))


def test_a_550_rejection_fails_the_notice_for_good(system, box, address, caplog):
    key = queue_email(system, "SR-1001:5")
    sink = Sink(refuse_rcpt=f"550 5.1.1 <{address.upper()}>: Recipient address rejected: User unknown")
    with running_sink(sink) as port, caplog.at_level(logging.INFO):
        mailer = Mailer(f"smtp://127.0.0.1:{port}", FROM)
        assert deliver_email_notices(box, mailer) == {"sent": 0, "retry": 0, "failed": 1}
        assert deliver_email_notices(box, mailer, now=later()) == {"sent": 0, "retry": 0, "failed": 0}
    stored = row(system, key)
    assert stored.state == "failed" and stored.error.startswith("recipient refused: 550")
    assert address.upper() not in stored.error.upper() and mask_address(address) in stored.error
    assert address.lower() not in ours(caplog).lower() and sink.received == []


def test_a_4xx_reply_is_tried_again_and_a_5xx_to_the_message_is_final(system, box):
    greylisted = queue_email(system, "SR-1001:6")
    with running_sink(Sink(refuse_rcpt="451 4.7.1 Greylisted, try again later")) as port:
        assert deliver_email_notices(box, Mailer(f"smtp://127.0.0.1:{port}", FROM)) == {"sent": 0, "retry": 1, "failed": 0}
    assert row(system, greylisted).state == "sending" and row(system, greylisted).error.startswith("recipient refused: 451")
    with running_sink(Sink(refuse_data="554 5.7.1 Message rejected as spam")) as port:
        got = deliver_email_notices(box, Mailer(f"smtp://127.0.0.1:{port}", FROM), now=later())
    assert got == {"sent": 0, "retry": 0, "failed": 1} and row(system, greylisted).state == "failed"


def test_an_address_with_a_line_break_is_never_sent(system, box):
    key = queue_email(system, "SR-1001:7", address="ria@example.in\r\nBcc: everyone@example.in")
    sink = Sink()
    with running_sink(sink) as port:
        assert deliver_email_notices(box, Mailer(f"smtp://127.0.0.1:{port}", FROM)) == {"sent": 0, "retry": 0, "failed": 1}
    assert sink.received == [] and row(system, key).state == "failed" and "line break" in row(system, key).error


def test_send_refuses_a_bad_address_before_connecting():
    mailer = Mailer("smtp://127.0.0.1:1", FROM)   # port 1: a connection try would fail differently
    with pytest.raises(PermanentFailure, match="exactly one"):
        mailer.send(Notice(1, "k", "email", "a@b@c.example", None, None, "x", None, 1))


# -- TLS -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """A throwaway self-signed certificate for 127.0.0.1: (server context, client context)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    folder = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    client = ssl.create_default_context(cafile=str(folder / "cert.pem"))
    return server, client


def test_starttls_with_auth(system, box, tls):
    server_context, client_context = tls
    key = queue_email(system, "SR-1001:8")
    sink = Sink()
    with running_sink(sink, tls_context=server_context, require_starttls=True, authenticator=check_login) as port:
        mailer = Mailer(f"smtp+starttls://bot%40cardcare.example:{URL_PASSWORD}@127.0.0.1:{port}", FROM,
                        tls_context=client_context)
        assert deliver_email_notices(box, mailer) == {"sent": 1, "retry": 0, "failed": 0}
    assert sink.received[0]["tls"] and sink.received[0]["user"] == USER and row(system, key).state == "sent"


def test_a_wrong_password_is_our_setup_so_the_notice_waits(system, box, tls, caplog):
    server_context, client_context = tls
    key = queue_email(system, "SR-1001:12")
    sink = Sink()
    with running_sink(sink, tls_context=server_context, require_starttls=True, authenticator=check_login) as port, \
            caplog.at_level(logging.INFO):
        mailer = Mailer(f"smtp+starttls://bot%40cardcare.example:wrong-hunter2@127.0.0.1:{port}", FROM,
                        tls_context=client_context)
        assert deliver_email_notices(box, mailer) == {"sent": 0, "retry": 1, "failed": 0}
    assert sink.received == [] and row(system, key).state == "sending" and "535" in row(system, key).error
    assert "hunter2" not in ours(caplog) and "hunter2" not in row(system, key).error


def test_an_untrusted_certificate_is_an_outage_not_a_clear_text_fallback(system, box, tls):
    server_context, _ = tls
    key = queue_email(system, "SR-1001:9")
    sink = Sink()
    with running_sink(sink, tls_context=server_context, require_starttls=True) as port:
        mailer = Mailer(f"smtp+starttls://127.0.0.1:{port}", FROM)   # the system's CAs do not know it
        assert deliver_email_notices(box, mailer) == {"sent": 0, "retry": 1, "failed": 0}
    assert sink.received == [] and "CERTIFICATE_VERIFY_FAILED" in row(system, key).error


def test_implicit_tls(system, box, tls):
    server_context, client_context = tls
    sink = Sink()
    queue_email(system, "SR-1001:10")
    with running_sink(sink, ssl_context=server_context) as port:
        mailer = Mailer(f"smtps://127.0.0.1:{port}", FROM, tls_context=client_context)
        assert deliver_email_notices(box, mailer) == {"sent": 1, "retry": 0, "failed": 0}
    assert sink.received[0]["tls"]


# -- the command -----------------------------------------------------------------------------------
def test_the_command_says_e_mail_is_off_without_an_smtp_url(monkeypatch, capsys):
    monkeypatch.delenv("CARDCARE_SMTP_URL", raising=False)
    assert mailer_module.main(["--once"]) == 0
    assert "E-mail is off" in capsys.readouterr().out


def test_the_command_delivers_once(system, monkeypatch):
    queue_email(system, "SR-1001:11")
    sink = Sink()
    with running_sink(sink) as port:
        monkeypatch.setenv("CARDCARE_DB_URL", system.settings.db_url)
        monkeypatch.setenv("CARDCARE_SMTP_URL", f"smtp://127.0.0.1:{port}")
        monkeypatch.setenv("CARDCARE_MAIL_FROM", FROM)
        assert mailer_module.main(["--once"]) == 0
    assert len(sink.received) == 1


def test_the_command_refuses_a_bad_url_without_echoing_it(monkeypatch, capsys):
    monkeypatch.setenv("CARDCARE_SMTP_URL", "smtp://bot:hunter2@relay:port")
    assert mailer_module.main(["--once"]) == 2
    err = capsys.readouterr().err
    assert "invalid port" in err and "hunter2" not in err
