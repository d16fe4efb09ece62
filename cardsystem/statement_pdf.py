"""E-statements as password-protected PDFs (AES-128), built with fpdf2."""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Iterable

from fpdf import FPDF
from fpdf.enums import EncryptionMethod

from cardsystem.formatting import format_date, format_inr, format_month
from cardsystem.views import CardView, CustomerView, StatementView, TransactionView

# fpdf2's font subsetting logs about a hundred INFO lines per PDF: only its warnings
logging.getLogger("fontTools").setLevel(logging.WARNING)

PASSWORD_RULE = (
    "the first four letters of your name in CAPITALS followed by your date and month of "
    "birth as DDMM (for example, RAHUL KUMAR born on 5 March would use RAHU0503)"
)
_FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")


def statement_password(customer: CustomerView) -> str:
    """The password rule Indian issuers use: first 4 letters of the name + DDMM of birth."""
    letters = re.sub(r"[^A-Za-z]", "", customer.name).upper()[:4]
    return f"{letters}{customer.date_of_birth:%d%m}"


def _money(paise: int, rupee: str) -> str:
    return format_inr(paise).replace("\u20b9", rupee)


def render_statement_pdf(
    customer: CustomerView,
    card: CardView,
    statement: StatementView,
    transactions: Iterable[TransactionView],
    bank_name: str = "cardcare Bank",
) -> bytes:
    """Render one month's statement; the PDF opens only with the customer's password."""
    pdf = FPDF(format="A4")
    pdf.set_title(f"{bank_name} statement {statement.period}")
    rupee = "Rs. "
    family = "helvetica"
    if (_FONT_DIR / "DejaVuSans.ttf").exists():
        pdf.add_font("dejavu", "", str(_FONT_DIR / "DejaVuSans.ttf"))
        pdf.add_font("dejavu", "B", str(_FONT_DIR / "DejaVuSans-Bold.ttf"))
        family, rupee = "dejavu", "\u20b9"
    pdf.set_encryption(
        owner_password=f"owner-{statement.id}-{statement_password(customer)}",
        user_password=statement_password(customer),
        encryption_method=EncryptionMethod.AES_128,
    )
    pdf.add_page()
    pdf.set_font(family, "B", 16)
    pdf.cell(0, 10, f"{bank_name} - Credit Card Statement", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(family, "", 10)
    for line in (
        f"{customer.name}",
        f"Card: {card.product} ({card.network}) XXXX XXXX XXXX {card.last4}",
        f"Statement period: {format_date(statement.period_start)} to {format_date(statement.period_end)}"
        f" ({format_month(statement.period)})",
    ):
        pdf.cell(0, 6, line, new_x="LMARGIN", new_y="NEXT")
    pdf.ln(3)
    pdf.set_font(family, "B", 11)
    pdf.cell(0, 7, "Summary", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(family, "", 10)
    txns = list(transactions)
    debits = sum(t.amount_paise for t in txns if t.amount_paise > 0 and t.status != "reversed")
    credits = -sum(t.amount_paise for t in txns if t.amount_paise < 0 and t.status != "reversed")
    summary = (
        ("Opening balance", _money(statement.opening_balance_paise, rupee)),
        ("Purchases and charges", _money(debits, rupee)),
        ("Payments and credits", _money(credits, rupee)),
        ("Total amount due", _money(statement.closing_balance_paise, rupee)),
        ("Minimum amount due", _money(statement.minimum_due_paise, rupee)),
        ("Payment due date", format_date(statement.due_date)),
    )
    for label, value in summary:
        pdf.cell(70, 6, label)
        pdf.cell(0, 6, value, align="R", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)
    pdf.set_font(family, "B", 11)
    pdf.cell(0, 7, "Transactions", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(family, "B", 9)
    widths = (25, 25, 80, 20, 40)
    for width, head in zip(widths, ("Date", "Ref", "Merchant", "Status", "Amount")):
        pdf.cell(width, 6, head, border="B", align="R" if head == "Amount" else "L")
    pdf.ln()
    pdf.set_font(family, "", 9)
    for t in txns:
        amount = _money(abs(t.amount_paise), rupee) + (" CR" if t.amount_paise < 0 else "")
        row = (format_date(t.posted_on), t.reference, t.merchant[:45], t.status, amount)
        for width, value, align in zip(widths, row, "LLLLR"):
            pdf.cell(width, 6, value, align=align)
        pdf.ln()
    if not txns:
        pdf.cell(0, 6, "No transactions in this period.", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)
    pdf.set_font(family, "", 8)
    pdf.multi_cell(0, 4, "Paying only the minimum amount due leads to interest on the balance. "
                         "Report any transaction you don't recognise at once.")
    return bytes(pdf.output())
