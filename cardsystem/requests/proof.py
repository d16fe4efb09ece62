"""Proof of resolution: the PDF a customer gets when the desk resolves a request, signed by the bank.

The signature is PAdES baseline B-B (a CMS signature embedded in the PDF, no timestamp, no
revocation data), so signing and checking never touch the network.

    pdf = make_proof(ServiceDesk().request("SR-..."))
    verify_proof(pdf, bank_certificate_pem)
"""
from __future__ import annotations

import datetime as dt
import fcntl
import logging
import os
import unicodedata
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from asn1crypto import keys as asn1_keys
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from fpdf import FPDF
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign import fields, signers
from pyhanko.sign.validation import validate_pdf_signature
from pyhanko_certvalidator import ValidationContext
from pyhanko_certvalidator.registry import SimpleCertificateStore

from cardsystem.config import PROJECT_ROOT
from cardsystem.formatting import format_datetime, redact_card_numbers

# fpdf2's font subsetting logs about a hundred INFO lines per PDF: only its warnings
logging.getLogger("fontTools").setLevel(logging.WARNING)

BANK_NAME = "CardCare Bank"
TITLE = "Service request resolved"
DEV_COMMON_NAME = "CardCare Bank (development signing key \u2014 not trusted)"
KEY_ENV = "CARDCARE_SIGNING_KEY"
CERT_ENV = "CARDCARE_SIGNING_CERT"
PASSWORD_ENV = "CARDCARE_SIGNING_KEY_PASSWORD"
DEV_DIRECTORY = PROJECT_ROOT / "var" / "signing"
DEV_KEY_FILE, DEV_CERT_FILE = "dev-signing-key.pem", "dev-signing-cert.pem"
FIELD_NAME = "Signature1"
logger = logging.getLogger(__name__)
_FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
_REPLACEMENT = "\ufffd"
# History columns in mm: date, status; the note takes the rest of the line and wraps.
_HISTORY_WIDTHS = (42, 30)


# --- rendering ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Fonts:
    family: str
    # Code points both faces can draw; None for the core font (Latin-1 only).
    glyphs: Optional[frozenset]


def _load_fonts(pdf: FPDF) -> _Fonts:
    """DejaVu when the machine has it (₹, most scripts), else Helvetica, as the statements do."""
    regular, bold = _FONT_DIR / "DejaVuSans.ttf", _FONT_DIR / "DejaVuSans-Bold.ttf"
    if not (regular.exists() and bold.exists()):
        return _Fonts("helvetica", None)
    pdf.add_font("dejavu", "", str(regular))
    pdf.add_font("dejavu", "B", str(bold))
    glyphs = []
    for style in ("", "B"):
        pdf.set_font("dejavu", style)
        glyphs.append(frozenset(pdf.current_font.cmap))
    return _Fonts("dejavu", glyphs[0] & glyphs[1])


def _drawable(char: str, fonts: _Fonts) -> bool:
    if fonts.glyphs is None:
        return ord(char) < 256
    return ord(char) in fonts.glyphs


def _safe_text(text: Any, fonts: _Fonts) -> str:
    """Text the font can draw: controls become spaces, invisible format marks go, a missing glyph
    becomes a replacement mark (the core font cannot encode anything past Latin-1 at all)."""
    out: List[str] = []
    for char in "" if text is None else str(text):
        category = unicodedata.category(char)
        if char == "\n":
            out.append(char)
        elif category in ("Cc", "Zl", "Zp"):
            out.append(" ")
        elif category == "Cf" or 0xFE00 <= ord(char) <= 0xFE0F:
            continue  # joiners and variation selectors only steer other glyphs
        elif _drawable(char, fonts):
            out.append(char)
        elif char == "\u20b9":
            out.append("Rs. ")
        else:
            out.append(_REPLACEMENT if _drawable(_REPLACEMENT, fonts) else "?")
    return "".join(out)


def _free_text(text: Any, fonts: _Fonts) -> str:
    """A note or resolution as typed: an agent may paste a card number into it, so it is masked."""
    return _safe_text(redact_card_numbers(str(text)) if text else "-", fonts)


def _moment(value: Optional[str]) -> str:
    """'23 Nov 2026, 10:30 AM' from an ISO string; what it was if it is not one; '-' for none."""
    if not value:
        return "-"
    try:
        moment = dt.datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    return format_datetime(moment)


def _details(data: Dict[str, Any]) -> List[Tuple[str, str]]:
    customer = data.get("customer") or {}
    rows = [
        ("Reference", data.get("reference")),
        ("Request", data.get("label")),
        ("Status", str(data.get("status") or "").replace("_", " ")),
        ("Customer", customer.get("name")),
        ("Phone", customer.get("phone")),
    ]
    if data.get("card_last4"):
        # Only the last four digits ever reach this module; the mask makes that plain.
        rows.append(("Card", f"XXXX XXXX XXXX {data['card_last4']}"))
    rows += [
        ("Raised on", _moment(data.get("created_at"))),
        ("Promised by", _moment(data.get("first_promised_by"))),
        ("Resolved on", _moment(data.get("closed_at"))),
    ]
    return [(label, "-" if value in (None, "") else str(value)) for label, value in rows]


def _heading(pdf: FPDF, fonts: _Fonts, text: str, size: int = 11) -> None:
    pdf.set_font(fonts.family, "B", size)
    pdf.cell(0, size * 0.6, text, new_x="LMARGIN", new_y="NEXT")


def _write_details(pdf: FPDF, fonts: _Fonts, rows: Sequence[Tuple[str, str]]) -> None:
    for label, value in rows:
        pdf.set_font(fonts.family, "B", 10)
        pdf.cell(35, 6, label)
        pdf.set_font(fonts.family, "", 10)
        pdf.multi_cell(0, 6, _safe_text(value, fonts), align="L", new_x="LMARGIN", new_y="NEXT")


def _history_header(pdf: FPDF, fonts: _Fonts) -> None:
    pdf.set_font(fonts.family, "B", 9)
    for width, head in zip(_HISTORY_WIDTHS, ("Date", "Status")):
        pdf.cell(width, 6, head, border="B")
    pdf.cell(0, 6, "Note", border="B", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(fonts.family, "", 9)


def _write_history(pdf: FPDF, fonts: _Fonts, history: Iterable[Dict[str, Any]]) -> None:
    """Date, status and note per line; the note wraps and may run over pages, so rows are laid
    out by hand (fpdf2's table cannot split a row taller than a page)."""
    entries = list(history or [])
    _history_header(pdf, fonts)
    if not entries:
        pdf.cell(0, 6, "No history recorded.", new_x="LMARGIN", new_y="NEXT")
        return
    for entry in entries:
        if pdf.get_y() + 10 > pdf.page_break_trigger:
            pdf.add_page()
            _history_header(pdf, fonts)
        status = str(entry.get("status") or "").replace("_", " ")
        pdf.cell(_HISTORY_WIDTHS[0], 5, _safe_text(_moment(entry.get("at")), fonts))
        pdf.cell(_HISTORY_WIDTHS[1], 5, _safe_text(status, fonts))
        pdf.multi_cell(0, 5, _free_text(entry.get("note"), fonts), align="L",
                       new_x="LMARGIN", new_y="NEXT")
        pdf.ln(1)


def render_proof(data: Dict[str, Any]) -> bytes:
    """An A4 proof of resolution for one request, as `ServiceDesk.request` describes it."""
    pdf = FPDF(format="A4")
    fonts = _load_fonts(pdf)
    pdf.set_title(_safe_text(f"{BANK_NAME} - {TITLE} - {data.get('reference', '')}", fonts))
    pdf.set_author(BANK_NAME)
    pdf.add_page()
    _heading(pdf, fonts, BANK_NAME, 16)
    _heading(pdf, fonts, TITLE, 13)
    pdf.ln(2)
    _write_details(pdf, fonts, _details(data))
    pdf.ln(3)
    _heading(pdf, fonts, "Resolution")
    pdf.set_font(fonts.family, "", 10)
    pdf.multi_cell(0, 5, _free_text(data.get("resolution"), fonts), align="L",
                   new_x="LMARGIN", new_y="NEXT")
    pdf.ln(3)
    _heading(pdf, fonts, "History")
    _write_history(pdf, fonts, data.get("history") or [])
    pdf.ln(4)
    pdf.set_font(fonts.family, "", 8)
    pdf.multi_cell(0, 4, f"This document is digitally signed by {BANK_NAME}. A PDF reader that checks "
                         "signatures shows whether it has been changed since it was signed.")
    return bytes(pdf.output())


# --- signing keys ------------------------------------------------------------------------------

@dataclass(frozen=True)
class SigningPair:
    """The bank's signing key and certificate, ready for pyHanko."""

    signer: signers.SimpleSigner
    certificate_pem: bytes

    @property
    def common_name(self) -> str:
        return self.signer.signing_cert.subject.native.get("common_name", "")


def load_signer(key_path: Union[str, Path], cert_path: Union[str, Path],
                key_password: Optional[bytes] = None) -> SigningPair:
    """Key and certificate from PEM files; the certificate file may carry its CA chain after it."""
    key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=key_password)
    cert_pem = Path(cert_path).read_bytes()
    certs = x509.load_pem_x509_certificates(cert_pem)
    own = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, own) != \
            certs[0].public_key().public_bytes(serialization.Encoding.DER, own):
        # Caught here, a mismatch would otherwise only show as every proof failing to verify.
        raise ValueError(f"the signing key {key_path} does not belong to the certificate {cert_path}")
    der_key = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    chain = [asn1_x509.Certificate.load(c.public_bytes(serialization.Encoding.DER)) for c in certs]
    signer = signers.SimpleSigner(signing_cert=chain[0], signing_key=asn1_keys.PrivateKeyInfo.load(der_key),
                                  cert_registry=SimpleCertificateStore.from_certs(chain[1:]))
    return SigningPair(signer=signer, certificate_pem=certs[0].public_bytes(serialization.Encoding.PEM))


def _dev_certificate(key: rsa.RSAPrivateKey, common_name: str = DEV_COMMON_NAME) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, BANK_NAME)])
    now = dt.datetime.now(dt.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # a little slack for a clock that runs behind the one that made the pair
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=730))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # pyHanko wants non-repudiation (content commitment) on a document signer's certificate
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def write_private(path: Path, content: bytes) -> None:
    """Write through a fresh 0600 file, then move it into place, so no reader sees half a file (a key, a proof)."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
    os.replace(temporary, path)


def ensure_dev_pair(directory: Union[str, Path], common_name: str = DEV_COMMON_NAME) -> Tuple[Path, Path]:
    """A self-signed development key and certificate in `directory` (made 0700), made on first use
    (`common_name`: another name for a stand-in of the bank's pair, e.g. in a staging test)."""
    folder = Path(directory)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    key_path, cert_path = folder / DEV_KEY_FILE, folder / DEV_CERT_FILE
    # Two processes starting at once must not each write half of a different pair.
    with open(folder / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (key_path.exists() and cert_path.exists()):
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            write_private(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
            write_private(cert_path, _dev_certificate(key, common_name).public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def signer_from_env() -> SigningPair:
    """The bank's pair from CARDCARE_SIGNING_KEY / _CERT (/ _KEY_PASSWORD); outside production,
    with neither set, the development pair in var/signing."""
    env = os.environ
    key_path, cert_path = env.get(KEY_ENV, ""), env.get(CERT_ENV, "")
    password = env.get(PASSWORD_ENV)
    production = env.get("CARDCARE_ENV", "development") == "production"
    if key_path and cert_path:
        pair = load_signer(key_path, cert_path, password.encode("utf-8") if password else None)
        if production and pair.common_name == DEV_COMMON_NAME:
            raise RuntimeError(f"{KEY_ENV}/{CERT_ENV} point at the development signing pair; "
                               "production needs the bank's own key and certificate")
        return pair
    if key_path or cert_path:
        raise RuntimeError(f"set both {KEY_ENV} and {CERT_ENV} (PEM files), or neither")
    if production:
        raise RuntimeError(f"{KEY_ENV} and {CERT_ENV} must name the bank's signing key and certificate "
                           "(PEM files) in production")
    return load_signer(*ensure_dev_pair(DEV_DIRECTORY))


# --- signing and checking ----------------------------------------------------------------------

def _pyhanko_signer(signer: Union[SigningPair, signers.Signer, None]) -> signers.Signer:
    if signer is None:
        return signer_from_env().signer
    return signer.signer if isinstance(signer, SigningPair) else signer


def off_the_loop(function):
    """pyHanko runs its own event loop, which cannot start inside a running one: called from async
    code (the action server, a browser test), the work moves to a worker thread."""
    import functools

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        import asyncio
        from concurrent.futures import ThreadPoolExecutor

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return function(*args, **kwargs)
        with ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(function, *args, **kwargs).result()
    return wrapper


@off_the_loop
def sign_pdf(pdf: bytes, signer: Union[SigningPair, signers.Signer, None] = None,
             reason: str = "Proof of resolution", location: str = BANK_NAME) -> bytes:
    """Append an invisible PAdES signature (field Signature1) as an incremental update.

    Safe to call from async code too (off_the_loop moves it to a worker thread)."""
    meta = signers.PdfSignatureMetadata(
        field_name=FIELD_NAME, subfilter=fields.SigSeedSubFilter.PADES, md_algorithm="sha256",
        reason=reason, location=location,
    )
    output = BytesIO()
    # no timestamper and no validation context: nothing is fetched while signing
    signers.PdfSigner(meta, signer=_pyhanko_signer(signer)).sign_pdf(
        IncrementalPdfFileWriter(BytesIO(pdf)), output=output)
    return output.getvalue()


def make_proof(data: Dict[str, Any], signer: Union[SigningPair, signers.Signer, None] = None) -> bytes:
    """The signed proof of resolution for one request."""
    return sign_pdf(render_proof(data), signer=signer)


def _not_verified(coverage: str) -> Dict[str, Any]:
    return {"intact": False, "valid": False, "trusted": False, "signer": None, "signed_at": None,
            "coverage": coverage}


@off_the_loop
def verify_proof(pdf: bytes, trusted_cert_pem: bytes) -> Dict[str, Any]:
    """Check the proof's signature with `trusted_cert_pem` as the only trust root, offline.

    `valid` means the signature is sound and covers these very bytes (intact). `coverage` is
    "ENTIRE_FILE" when nothing was added after signing; anything else (say "ENTIRE_REVISION")
    means content was appended later, which intact/valid alone do not show. A PDF that cannot
    be read, or has no signature, comes out not intact and not valid. Like sign_pdf, not for
    async code (pyHanko runs its own event loop)."""
    roots = [asn1_x509.Certificate.load(c.public_bytes(serialization.Encoding.DER))
             for c in x509.load_pem_x509_certificates(trusted_cert_pem)]
    context = ValidationContext(trust_roots=roots, allow_fetching=False)
    try:
        embedded = PdfFileReader(BytesIO(pdf)).embedded_signatures
        if not embedded:
            return _not_verified("unsigned")
        ours = [sig for sig in embedded if sig.field_name == FIELD_NAME] or embedded
        status = validate_pdf_signature(ours[-1], context)
    except RuntimeError:
        raise  # not the file's fault: called on a running event loop (pyHanko runs its own)
    except Exception as error:  # noqa: BLE001
        # The bytes are untrusted: pyHanko's parser fails on mangled input in many ways (PdfReadError,
        # ValueError, decimal and attribute errors); each is a failed check, logged, never a crash.
        logger.warning("proof of resolution could not be checked: %s: %s", type(error).__name__, error)
        logger.debug("details", exc_info=True)
        return _not_verified(f"unreadable: {type(error).__name__}")
    signed_at = status.signer_reported_dt
    return {
        "intact": bool(status.intact),
        # pyHanko's `valid` covers the signed attributes only; a changed document keeps it True
        "valid": bool(status.intact and status.valid),
        "trusted": bool(status.trusted),
        "signer": status.signing_cert.subject.native.get("common_name"),
        "signed_at": signed_at.isoformat() if signed_at else None,
        "coverage": status.coverage.name if status.coverage else "unknown",
    }


def main(argv: Optional[List[str]] = None) -> int:
    """python -m cardsystem.requests.proof dev-pair | verify FILE.pdf --cert CERT.pem"""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m cardsystem.requests.proof",
                                     description="Signed proofs of resolution: the development pair, checking a proof.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("dev-pair", help=f"make (once) the self-signed development pair in {DEV_DIRECTORY}")
    check = commands.add_parser("verify", help="check a proof's signature against a certificate")
    check.add_argument("pdf")
    check.add_argument("--cert", required=True, help="the bank's certificate (PEM)")
    args = parser.parse_args(argv)
    if args.command == "dev-pair":
        key, cert = ensure_dev_pair(DEV_DIRECTORY)
        print(f"Development signing pair (not trusted by anyone else): {key} and {cert}")
        return 0
    result = verify_proof(Path(args.pdf).read_bytes(), Path(args.cert).read_bytes())
    print(json.dumps(result, indent=2))
    return 0 if result["intact"] and result["valid"] and result["trusted"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
