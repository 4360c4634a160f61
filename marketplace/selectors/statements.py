"""Statements as documents: one job's statement, or an organization's month, as CSV (for
accounting software: exact 6-decimal amounts, ISO times) and PDF (for people: the one
display rule, `money.tusd`). Built from selectors/account.py, so a statement says what
the Account page says."""

from __future__ import annotations

import csv
import io
from datetime import UTC
from decimal import Decimal

from fpdf import FPDF
from fpdf.fonts import FontFace

from ..models import Job, Organization
from ..money import exact, tusd
from .account import Movement, account_balances, account_movements, job_statement_of

CSV_COLUMNS = ["date_utc", "type", "description", "job_id", "job_name", "amount_tusd",
               "available_change_tusd", "escrow_change_tusd", "status", "transaction"]
# The core PDF fonts cover Latin-1 only; a few common characters get their plain equivalents.
_PLAIN = str.maketrans({"—": "-", "–": "-", "×": "x", "…": "...", "“": '"', "”": '"', "‘": "'",
                        "’": "'", "→": "->", "·": "-", "≥": ">=", "≤": "<="})


def _movement_row(m: Movement) -> list[str]:
    return [m.at.astimezone(UTC).isoformat(timespec="seconds"), m.kind, m.label,
            str(m.job_id or ""), m.job_name, exact(m.amount), exact(m.available), exact(m.escrow),
            "pending" if m.pending else "done", m.tx_hash]


def _csv(rows: list[list[str]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerows(_safe_cell(r) for r in rows)
    return buf.getvalue().encode("utf-8")


def _safe_cell(row: list[str]) -> list[str]:
    """A cell a spreadsheet would run as a formula (a user's job name "=HYPERLINK(…)") is
    quoted as text."""
    return ["'" + c if c[:1] in ("=", "+", "-", "@", "\t", "\r") and not _is_number(c) else c for c in row]


def _is_number(text: str) -> bool:
    try:
        Decimal(text)
    except ArithmeticError:
        return False
    return True


def month_statement_csv(org: Organization, year: int, month: int) -> bytes:
    movements = account_movements(org, month=(year, month))
    return _csv([CSV_COLUMNS] + [_movement_row(m) for m in movements])


def job_statement_csv(org: Organization, job: Job) -> bytes:
    """The job's metered lines, its totals, and its movements (one CSV, three sections)."""
    data = job_statement_of(org, job)
    s = data["settlement"]
    rows: list[list[str]] = [["job_id", "job_name", "budget_tusd", "deposited_tusd", "charged_tusd",
                              "fee_tusd", "refunded_tusd", "settlement_status", "settlement_transaction"],
                             [str(job.pk), job.name, exact(job.budget),
                              exact(data["escrow"].amount) if data["escrow"] else "",
                              exact(s.charged) if s else "", exact(s.fee) if s else "",
                              exact(s.refunded) if s else "", s.status if s else "",
                              s.transaction.tx_hash if s and s.transaction else ""],
                             [],
                             ["attempt", "rank", "node", "provider", "gpu_seconds", "price_per_gpu_hour_tusd",
                              "amount_tusd", "status", "note"]]
    for line in data["lines"]:
        rows.append([str(line.get("attempt", "")), str(line.get("rank", "")), str(line.get("node", "")),
                     str(line.get("provider_name", "")), str(line.get("gpu_seconds", "")),
                     exact(line.get("price_per_gpu_hour")), exact(line.get("amount")),
                     str(line.get("status", "")), str(line.get("note", ""))])
    rows += [[], ["provider", "payout_address", "payout_tusd"]]
    rows += [[p.provider.name, p.address, exact(p.amount)] for p in data["payouts"]]
    rows += [[], CSV_COLUMNS] + [_movement_row(m) for m in data["movements"]]
    return _csv(rows)


# --- PDF --------------------------------------------------------------------------------------
class _Pdf(FPDF):
    def __init__(self, title: str):
        super().__init__(orientation="landscape", format="A4")
        self.doc_title = _plain(title)
        self.set_title(self.doc_title)
        self.set_author("ComputeMesh")
        self.set_auto_page_break(auto=True, margin=14)
        self.add_page()

    def header(self):
        self.set_font("helvetica", "B", 14)
        self.cell(0, 8, "ComputeMesh - " + self.doc_title, new_x="LMARGIN", new_y="NEXT")
        self.set_font("helvetica", "", 9)
        self.ln(2)

    def footer(self):
        self.set_y(-12)
        self.set_font("helvetica", "", 8)
        self.cell(0, 6, "Amounts in tUSD, a USD stablecoin with 6 decimals. Times in UTC. "
                        f"Page {self.page_no()}", align="C")

    def para(self, text: str, *, bold: bool = False):
        self.set_font("helvetica", "B" if bold else "", 10 if bold else 9)
        self.multi_cell(0, 5, _plain(text), new_x="LMARGIN", new_y="NEXT")
        self.set_font("helvetica", "", 9)

    def grid(self, rows: list[list[str]], widths: tuple[int, ...],
             numeric: frozenset[int] | set[int] = frozenset()):
        self.set_font("helvetica", "", 8)
        with self.table(col_widths=widths, text_align=tuple("RIGHT" if i in numeric else "LEFT"
                                                            for i in range(len(widths))),
                        headings_style=FontFace(emphasis="BOLD"), line_height=5) as table:
            for row in rows:
                r = table.row()
                for cell in row:
                    r.cell(_plain(cell))
        self.ln(3)


def _plain(text: str) -> str:
    return str(text).translate(_PLAIN).encode("latin-1", "replace").decode("latin-1")


def _movement_cells(m: Movement) -> list[str]:
    return [f"{m.at.astimezone(UTC):%Y-%m-%d %H:%M}", m.label,
            f"#{m.job_id} {m.job_name}" if m.job_id else "", tusd(m.amount),
            _signed(m.available), _signed(m.escrow), "pending" if m.pending else "done",
            (m.tx_hash[:18] + "...") if m.tx_hash else ""]


def _signed(value: Decimal) -> str:
    if not value:
        return ""
    return ("+" if value > 0 else "-") + tusd(abs(value))


MOVEMENT_HEAD = ["Date (UTC)", "Movement", "Job", "Amount", "Available", "In escrow", "Status", "Transaction"]
MOVEMENT_WIDTHS = (28, 78, 48, 30, 28, 28, 16, 36)


def month_statement_pdf(org: Organization, year: int, month: int) -> bytes:
    movements = account_movements(org, month=(year, month))
    balances = account_balances(org, chain=False)
    pdf = _Pdf(f"Statement of {org.name} for {year}-{month:02d}")
    pdf.para(f"Organization: {org.name} ({org.get_kind_display()})")
    totals = []
    if org.is_consumer:
        totals.append(f"To date: spent {tusd(balances.spent)}, refunded {tusd(balances.refunded)}, "
                      f"in escrow now {tusd(balances.escrowed)}.")
    if org.is_provider:
        totals.append(f"To date: earned {tusd(balances.earned)}, waiting for settlement "
                      f"{tusd(balances.earning)}.")
    for line in totals:
        pdf.para(line)
    count = len(movements)
    pdf.para(f"{count} movement{'s' if count != 1 else ''} in {year}-{month:02d}", bold=True)
    if movements:
        pdf.grid([MOVEMENT_HEAD] + [_movement_cells(m) for m in movements], MOVEMENT_WIDTHS, {3, 4, 5})
    return bytes(pdf.output())


def job_statement_pdf(org: Organization, job: Job) -> bytes:
    data = job_statement_of(org, job)
    s, escrow = data["settlement"], data["escrow"]
    pdf = _Pdf(f"Statement of job #{job.pk}")
    pdf.para(f"Job #{job.pk}: {job.name}")
    pdf.para(f"Organization: {org.name}. Status: {job.get_status_display()}. Budget: {tusd(job.budget)}.")
    if escrow is not None:
        pdf.para(f"Escrow: {escrow.get_status_display()}, {tusd(escrow.amount)} deposited"
                 + (f" from {escrow.consumer_address}" if escrow.consumer_address else "") + ".")
    if s is not None:
        pdf.para(f"Charged for work done: {tusd(s.charged)} (platform fee {tusd(s.fee)}). "
                 f"Back to the consumer: {tusd(s.refunded)}. Settlement: {s.get_status_display()}"
                 + (f", transaction {s.transaction.tx_hash}" if s.transaction else "") + ".", bold=True)
    if data["lines"]:
        rows = [["Attempt", "Rank", "Node", "Provider", "GPU-s", "tUSD/GPU-h", "Charged", "Status"]]
        rows += [[str(x.get("attempt", "")), str(x.get("rank", "")), str(x.get("node", "")),
                  str(x.get("provider_name", "")), str(x.get("gpu_seconds", "")),
                  tusd(x.get("price_per_gpu_hour")), tusd(x.get("amount")),
                  str(x.get("status", "")) + (f" - {x['note']}" if x.get("note") else "")]
                 for x in data["lines"]]
        pdf.grid(rows, (18, 14, 50, 50, 22, 28, 30, 65), {4, 5, 6})
    if data["payouts"]:
        pdf.grid([["Paid to provider", "Address", "Amount"]]
                 + [[p.provider.name, p.address, tusd(p.amount)] for p in data["payouts"]],
                 (80, 120, 40), {2})
    if data["movements"]:
        pdf.para("Movements", bold=True)
        pdf.grid([MOVEMENT_HEAD] + [_movement_cells(m) for m in data["movements"]], MOVEMENT_WIDTHS,
                 {3, 4, 5})
    return bytes(pdf.output())
