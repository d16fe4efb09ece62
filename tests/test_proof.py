"""Proof of resolution: rendering awkward text, PAdES signing and checking, offline, and the keys."""
from __future__ import annotations

import datetime as dt
import re
import stat
from io import BytesIO
from pathlib import Path
from typing import Dict, List

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.reader import PdfFileReader

from cardsystem.requests import proof

LONG_NOTE = ("Customer called again about the disputed charge at the fuel station. " * 25)[:1700] + "x" * 300
RESOLUTION = "Replacement card dispatched; \u20b9500 fee waived."
HINDI_NOTE = "\u0915\u093e\u0930\u094d\u0921 \u0916\u094b \u0917\u092f\u093e"  # "card lost", Devanagari
PASTED_CARD = "4111 1111 1111 1111"


def request_data(**changes) -> Dict:
    data = {
        "reference": "SR-20261123-K7Q2", "label": "Card replacement", "status": "resolved",
        "customer": {"name": "\u0930\u093e\u0939\u0941\u0932 \u0915\u0941\u092e\u093e\u0930 Rahul \U0001F600",
                     "phone": "91******0001"},
        "card_last4": "4242",
        "created_at": "2026-11-20T10:00:00", "first_promised_by": "2026-11-25T18:00:00",
        "closed_at": "2026-11-23T10:30:00",
        "resolution": RESOLUTION,
        "history": [
            {"status": "open", "note": HINDI_NOTE + " \U0001F64F\U0001F3FD", "actor": "bot",
             "at": "2026-11-20T10:00:00", "event": "status"},
            {"status": "in_progress", "note": LONG_NOTE, "actor": "asha", "at": "2026-11-21T09:15:00",
             "event": "status"},
            {"status": "resolved", "note": f"old card {PASTED_CARD} closed\x00\u200d\ud800\u202e", "actor": "asha",
             "at": "2026-11-23T10:30:00", "event": "status"},
            {"status": "resolved", "note": None, "actor": "asha", "at": "not a date", "event": "status"},
        ],
    }
    data.update(changes)
    return data


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> proof.SigningPair:
    return proof.load_signer(*proof.ensure_dev_pair(tmp_path_factory.mktemp("keys") / "signing"))


@pytest.fixture(scope="module")
def signed(pair) -> bytes:
    return proof.make_proof(request_data(), signer=pair)


def _unescape(raw: bytes) -> bytes:
    """A PDF literal string's escapes undone."""
    simple = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"b": b"\b", b"f": b"\f"}

    def one(match: re.Match) -> bytes:
        code = match.group(1)
        if code[:1].isdigit():
            return bytes([int(code, 8) & 0xFF])
        return simple.get(code, code)
    return re.sub(rb"\\([0-7]{1,3}|.)", one, raw, flags=re.S)


def _glyph_map(font) -> Dict[int, str]:
    """Glyph id -> text from the font's ToUnicode CMap (fpdf2 writes bfchar entries)."""
    cmap = font["/ToUnicode"].data
    entries = b"".join(re.findall(rb"beginbfchar(.*?)endbfchar", cmap, re.S))
    pairs = re.findall(rb"<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]+)>", entries)
    return {int(code, 16): bytes.fromhex(text.decode()).decode("utf-16-be") for code, text in pairs}


_TOKENS = re.compile(rb"/(F\d+)\s+[\d.]+\s+Tf|\(((?:\\.|[^\\)])*)\)|\bT[jJ]\b", re.S)


def _decode(shown: bytes, glyphs) -> str:
    if glyphs is None:  # a core font: Latin-1 bytes
        return shown.decode("latin-1")
    return "".join(glyphs.get(int.from_bytes(shown[i:i + 2], "big"), "?") for i in range(0, len(shown), 2))


def pdf_text(pdf: bytes) -> str:
    """The text shown on every page, a line per Tj/TJ: no text extractor is installed, and fpdf2
    writes TrueType text as glyph ids, so those are mapped back through ToUnicode."""
    lines: List[str] = []
    reader = PdfFileReader(BytesIO(pdf))
    for page_ref in reader.root["/Pages"]["/Kids"]:
        page = page_ref.get_object()
        fonts = page["/Resources"]["/Font"]
        maps = {name[1:]: (_glyph_map(fonts[name]) if "/ToUnicode" in fonts[name] else None) for name in fonts}
        glyphs, line = None, []
        for token in _TOKENS.finditer(page["/Contents"].data):
            font, shown = token.group(1), token.group(2)
            if font:
                glyphs = maps[font.decode()]
            elif shown is not None:
                line.append(_decode(_unescape(shown), glyphs))
            else:  # Tj or TJ (justified lines come as arrays of pieces)
                lines.append("".join(line))
                line = []
    return "\n".join(lines)


def signed_ranges(pdf: bytes) -> List[range]:
    start1, length1, start2, length2 = map(int, re.search(
        rb"/ByteRange\s*\[\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", pdf).groups())
    return [range(start1, start1 + length1), range(start2, start2 + length2)]


def test_awkward_text_renders_and_the_signature_checks_out(pair, signed):
    result = proof.verify_proof(signed, pair.certificate_pem)
    assert (result["intact"], result["valid"], result["trusted"]) == (True, True, True)
    assert result["signer"] == proof.DEV_COMMON_NAME == "CardCare Bank (development signing key \u2014 not trusted)"
    assert result["coverage"] == "ENTIRE_FILE"
    signed_at = dt.datetime.fromisoformat(result["signed_at"])
    assert abs(dt.datetime.now(dt.timezone.utc) - signed_at) < dt.timedelta(minutes=5)


def test_the_proof_shows_the_request(signed):
    text = pdf_text(signed)
    for shown in ("CardCare Bank", "Service request resolved", "SR-20261123-K7Q2", "Card replacement",
                  RESOLUTION if proof._FONT_DIR.exists() else RESOLUTION.replace("\u20b9", "Rs. "),
                  "91******0001", "XXXX XXXX XXXX 4242", "20 Nov 2026, 10:00 AM", "25 Nov 2026, 6:00 PM",
                  "23 Nov 2026, 10:30 AM", "Rahul", "in progress", "not a date"):
        assert shown in text
    # DejaVu has no Devanagari: each letter it cannot draw comes out as a replacement mark
    assert HINDI_NOTE in text or "\ufffd" * 5 in text
    assert PASTED_CARD not in text and "4111111111111111" not in text and "XXXX-XXXX-XXXX-1111" in text
    # the long note wraps over lines and pages, nothing of it lost (line breaks eat the spaces)
    assert re.sub(r"\s", "", LONG_NOTE) in re.sub(r"\s", "", text)


def test_empty_history_and_no_card(pair):
    pdf = proof.make_proof(request_data(history=[], card_last4=None, resolution="", closed_at=None), signer=pair)
    text = pdf_text(pdf)
    assert "No history recorded." in text and "XXXX" not in text
    assert proof.verify_proof(pdf, pair.certificate_pem)["valid"]


def test_without_dejavu_the_core_font_gets_replacements(monkeypatch, tmp_path):
    monkeypatch.setattr(proof, "_FONT_DIR", tmp_path / "no-fonts")
    text = pdf_text(proof.render_proof(request_data()))
    assert "Rs. 500 fee waived" in text and "????? ????? Rahul ?" in text


def test_another_certificate_does_not_make_it_trusted(tmp_path, signed):
    stranger = proof.load_signer(*proof.ensure_dev_pair(tmp_path / "other"))
    result = proof.verify_proof(signed, stranger.certificate_pem)
    assert (result["intact"], result["valid"], result["trusted"]) == (True, True, False)


@pytest.mark.parametrize("where", ["title", 0.2, 0.5, 0.8, "after the signature"])
def test_a_changed_byte_in_the_signed_range_breaks_it(pair, signed, where):
    first, second = signed_ranges(signed)
    if where == "title":
        position = signed.index(b"Service request resolved", 0, first.stop)
    elif where == "after the signature":
        position = second.start + 5
    else:
        position = int(first.stop * where)
    assert position in first or position in second
    tampered = bytearray(signed)
    tampered[position] ^= 0x01
    result = proof.verify_proof(bytes(tampered), pair.certificate_pem)
    assert not result["intact"] and not result["valid"] and not result["trusted"]


def test_content_appended_after_signing_shows_in_coverage(pair, signed):
    writer = IncrementalPdfFileWriter(BytesIO(signed))
    writer.root["/CardCareNote"] = generic.TextStringObject("added later")
    writer.update_root()
    out = BytesIO()
    writer.write(out)
    assert proof.verify_proof(out.getvalue(), pair.certificate_pem)["coverage"] != "ENTIRE_FILE"


@pytest.mark.parametrize("pdf", [b"", b"not a pdf at all", "unsigned"])
def test_unsigned_or_unreadable_is_not_valid(pair, pdf):
    pdf = proof.render_proof(request_data()) if pdf == "unsigned" else pdf
    result = proof.verify_proof(pdf, pair.certificate_pem)
    assert (result["intact"], result["valid"], result["trusted"], result["signer"]) == (False, False, False, None)


def test_dev_pair_is_private_and_made_once(tmp_path):
    key_path, cert_path = proof.ensure_dev_pair(tmp_path / "signing")
    assert stat.S_IMODE((tmp_path / "signing").stat().st_mode) == 0o700
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert_path.stat().st_mode) == 0o600
    key = key_path.read_bytes()
    assert proof.ensure_dev_pair(tmp_path / "signing") == (key_path, cert_path)
    assert key_path.read_bytes() == key


def _clear_signing_env(monkeypatch):
    for name in (proof.KEY_ENV, proof.CERT_ENV, proof.PASSWORD_ENV, "CARDCARE_ENV"):
        monkeypatch.delenv(name, raising=False)


def test_production_needs_the_signing_variables(monkeypatch, tmp_path):
    _clear_signing_env(monkeypatch)
    monkeypatch.setattr(proof, "DEV_DIRECTORY", tmp_path / "signing")
    monkeypatch.setenv("CARDCARE_ENV", "production")
    with pytest.raises(RuntimeError, match="CARDCARE_SIGNING_KEY and CARDCARE_SIGNING_CERT"):
        proof.signer_from_env()
    assert not (tmp_path / "signing").exists()
    key_path, cert_path = proof.ensure_dev_pair(tmp_path / "signing")
    monkeypatch.setenv(proof.KEY_ENV, str(key_path))
    with pytest.raises(RuntimeError, match="both"):
        proof.signer_from_env()
    monkeypatch.setenv(proof.CERT_ENV, str(cert_path))
    with pytest.raises(RuntimeError, match="development signing pair"):
        proof.signer_from_env()


def test_development_uses_the_dev_pair(monkeypatch, tmp_path):
    _clear_signing_env(monkeypatch)
    monkeypatch.setattr(proof, "DEV_DIRECTORY", tmp_path / "signing")
    assert proof.signer_from_env().common_name == proof.DEV_COMMON_NAME
    assert (tmp_path / "signing" / proof.DEV_KEY_FILE).exists()


def test_env_pair_with_a_password_and_an_ec_key(monkeypatch, tmp_path, pair):
    """The bank's own pair: here an EC P-256 key, encrypted, and a certificate for it."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = proof._dev_certificate(key)
    key_path, cert_path = tmp_path / "bank.key", tmp_path / "bank.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.BestAvailableEncryption(b"s3cret")))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _clear_signing_env(monkeypatch)
    monkeypatch.setenv(proof.KEY_ENV, str(key_path))
    monkeypatch.setenv(proof.CERT_ENV, str(cert_path))
    monkeypatch.setenv(proof.PASSWORD_ENV, "s3cret")
    bank = proof.signer_from_env()
    result = proof.verify_proof(proof.sign_pdf(proof.render_proof(request_data())), bank.certificate_pem)
    assert (result["intact"], result["valid"], result["trusted"]) == (True, True, True)
    with pytest.raises(ValueError, match="does not belong"):
        proof.load_signer(key_path, Path(proof.ensure_dev_pair(tmp_path / "dev")[1]), b"s3cret")
