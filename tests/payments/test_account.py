"""The Account page, the header's balance and the statements (CSV and PDF, per job and per
month) of a job funded, run and settled on the in-process chain: the amounts are the
settlement's, and another organization sees none of it."""

from __future__ import annotations

import csv
import html
import io
import re
import zlib
from decimal import Decimal

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from marketplace.chain import indexer
from marketplace.models import Job, Settlement
from marketplace.money import amount, exact, tusd
from marketplace.services import payments

from .support import committed, completed_job

pytestmark = pytest.mark.django_db
S = Job.Status


@pytest.fixture
def settled(wallets, healthcare, carol_node) -> Job:
    """Medisight's job: 100 tUSD deposited, 25 minutes on carol's node at 1.234567 tUSD/GPU-h
    (0.514402 charged, 6 decimals that a 2-decimal display would hide), settled on chain."""
    job = completed_job(healthcare, carol_node, budget="100", minutes=25, price="1.234567")
    assert payments.settlements_prepare() == 1
    with committed():
        payments.settlement_batch_send()
    indexer.index_events()
    job.refresh_from_db()
    assert job.status == S.SETTLED
    return job


def pdf_text(body: bytes) -> str:
    """The text drawn in a PDF (fpdf2 writes each page's content as one deflated stream)."""
    assert body.startswith(b"%PDF-")
    out = []
    for stream in re.findall(rb"stream\r?\n(.*?)\r?\nendstream", body, re.S):
        try:
            out.append(zlib.decompress(stream).decode("latin-1"))
        except zlib.error:
            out.append(stream.decode("latin-1"))
    return "\n".join(out)


def test_the_statement_csv_of_a_job_has_the_settlements_amounts(client, alice, settled):
    s = Settlement.objects.get(job=settled)
    assert s.charged == Decimal("0.514402") and s.refunded == Decimal("99.485598")
    client.force_login(alice)
    response = client.get(f"/jobs/{settled.pk}/statement.csv")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    assert f'filename="computemesh-job-{settled.pk}.csv"' in response["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    head = dict(zip(rows[0], rows[1], strict=True))
    assert head["charged_tusd"] == "0.514402" and head["refunded_tusd"] == "99.485598"
    assert head["fee_tusd"] == exact(s.fee) and head["deposited_tusd"] == "100.000000"
    assert head["settlement_transaction"] == s.transaction.tx_hash
    line = rows[rows.index(["attempt", "rank", "node", "provider", "gpu_seconds", "price_per_gpu_hour_tusd",
                            "amount_tusd", "status", "note"]) + 1]
    assert line[5] == "1.234567" and line[6] == exact(s.statement[0]["amount"])
    payout = s.payouts.get()
    assert [payout.provider.name, payout.address, exact(payout.amount)] in rows
    movements = {r[1]: r for r in rows if len(r) == 10 and r[1] in ("deposit", "charged", "refund")}
    assert movements["deposit"][5] == "100.000000" and movements["deposit"][9] == settled.escrow.fund_tx
    assert movements["charged"][5] == "0.514402" and movements["charged"][9] == s.transaction.tx_hash
    assert movements["refund"][6] == "99.485598"  # what the consumer can spend again


def test_the_statement_pdf_of_a_job_shows_the_same_amounts(client, alice, settled):
    s = Settlement.objects.get(job=settled)
    client.force_login(alice)
    response = client.get(f"/jobs/{settled.pk}/statement.pdf")
    assert response.status_code == 200 and response["Content-Type"] == "application/pdf"
    text = pdf_text(response.content)
    for shown in (tusd(s.charged), tusd(s.refunded), tusd(s.fee), "0.514402 tUSD", "99.485598 tUSD"):
        assert shown in text, shown
    assert s.transaction.tx_hash in text and settled.name in text


def test_the_month_statement_lists_every_movement_of_the_month(client, alice, settled):
    now = timezone.now()
    client.force_login(alice)
    body = client.get(f"/account/statements/{now:%Y}-{now.month}.csv").content.decode()
    kinds = [r[1] for r in csv.reader(io.StringIO(body))][1:]
    assert sorted(kinds) == ["charged", "deposit", "refund"]
    pdf = client.get(f"/account/statements/{now:%Y}-{now.month}.pdf")
    assert pdf.status_code == 200 and "0.514402 tUSD" in pdf_text(pdf.content)
    assert client.get("/account/statements/2000-13.csv").status_code == 404
    assert client.get(f"/account/statements/{now:%Y}-{now.month}.xls").status_code == 404


def test_the_account_page_shows_balances_and_history_with_transactions_and_jobs(client, alice, settled,
                                                                                  healthcare):
    s = Settlement.objects.get(job=settled)
    client.force_login(alice)
    page = client.get("/account/").content.decode()
    assert 'data-testid="balance-spent">0.514402<' in page
    assert 'data-testid="balance-refunded">99.485598<' in page
    assert 'data-testid="balance-escrowed">0.00<' in page  # nothing held once settled
    # Available: the wallet's tUSD (5000 minted, 100 deposited) plus the refund the escrow credits.
    assert 'data-testid="balance-available">4,999.485598<' in page
    assert f'href="/chain/tx/{s.transaction.tx_hash}/"' in page
    assert f'href="/chain/tx/{settled.escrow.fund_tx}/"' in page
    assert f'href="/jobs/{settled.pk}/"' in page and f"/jobs/{settled.pk}/statement.pdf" in page
    header = client.get("/account/balance/").content.decode()
    assert 'data-testid="header-available">4,999.485598<' in header
    job_page = client.get(f"/jobs/{settled.pk}/").content.decode()
    assert 'data-testid="statement-downloads"' in job_page and f"/jobs/{settled.pk}/statement.csv" in job_page


def test_a_provider_sees_what_it_earned(client, carol, settled):
    payout = Settlement.objects.get(job=settled).payouts.get()
    client.force_login(carol)
    page = client.get("/account/").content.decode()
    assert f'data-testid="balance-earned">{amount(payout.amount)}<' in page
    assert 'data-kind="earning"' in page
    assert f'href="/jobs/{settled.pk}/"' not in page  # the consumer's job page is not the provider's
    header = client.get("/account/balance/").content.decode()
    assert "earned" in header


def test_another_organization_sees_none_of_it(client, bob, carol, settled):
    client.force_login(bob)
    assert client.get(f"/jobs/{settled.pk}/statement.csv").status_code == 404
    assert client.get(f"/jobs/{settled.pk}/statement.pdf").status_code == 404
    page = client.get("/account/").content.decode()
    assert settled.name not in page and 'data-testid="movement"' not in page
    now = timezone.now()
    body = client.get(f"/account/statements/{now:%Y}-{now.month}.csv").content.decode()
    assert body.strip().count("\n") == 0  # the header only
    client.force_login(carol)  # the provider that was paid: not the consumer's statement
    assert client.get(f"/jobs/{settled.pk}/statement.csv").status_code == 404
    client.logout()
    assert client.get("/account/").status_code == 302
    assert client.get(f"/jobs/{settled.pk}/statement.csv").status_code == 302


def test_a_formula_in_a_job_name_is_text_in_the_csv(client, alice, settled):
    Job.objects.filter(pk=settled.pk).update(name='=HYPERLINK("http://evil.example","x")')
    client.force_login(alice)
    body = client.get(f"/jobs/{settled.pk}/statement.csv").content.decode()
    assert "'=HYPERLINK" in body and ',=HYPERLINK' not in body


def test_the_transaction_page_shows_amounts_parties_the_job_and_the_chain_by_name(client, alice, bob,
                                                                                   settled):
    s = Settlement.objects.get(job=settled)
    client.force_login(alice)
    page = html.unescape(client.get(f"/chain/tx/{s.transaction.tx_hash}/").content.decode())
    assert "In-process development chain (eth-tester)" in page and "131277322940537)" in page
    assert f'href="/jobs/{settled.pk}/"' in page and settled.name in page
    assert f"{amount(s.charged)} tUSD" in page and f"{amount(s.refunded)} tUSD" in page
    assert "Medisight's wallet (yours)" in page and "the platform's operator" in page
    deposit = html.unescape(client.get(f"/chain/tx/{settled.escrow.fund_tx}/").content.decode())
    assert "Deposit into the job's escrow" in deposit and "100.00 tUSD" in deposit

    client.force_login(bob)  # another organization: the chain is public, its job and name are not
    page = html.unescape(client.get(f"/chain/tx/{s.transaction.tx_hash}/").content.decode())
    assert settled.name not in page and f'href="/jobs/{settled.pk}/"' not in page
    assert "Medisight" not in page and "other organization" in page


def test_the_account_api_answers_for_the_callers_organization_only(api, alice, bob, settled):
    s = Settlement.objects.get(job=settled)
    mine = api.as_user(alice).get("/api/v1/account/").json()
    assert mine["spent"] == exact(s.charged) and mine["refunded"] == exact(s.refunded)
    assert mine["available"] == "4999.485598" and mine["escrowed"] == "0.000000"
    kinds = {m["kind"]: m for m in mine["movements"]}
    assert kinds["charged"]["transaction"] == s.transaction.tx_hash and kinds["charged"]["job"] == settled.pk
    theirs = api.as_user(bob).get("/api/v1/account/").json()
    assert theirs["movements"] == [] and theirs["spent"] == "0.000000"
    assert APIClient().get("/api/v1/account/").status_code == 401


def test_the_faucet_api(api, bob, wallets, settings):
    settings.FAUCET_AMOUNT = Decimal("6000")  # bob's development wallet holds 5000 (the fixture)
    first = api.as_user(bob).post("/api/v1/account/faucet/")
    assert first.status_code == 201 and first.json()["amount"] == "1000.000000"
    again = api.as_user(bob).post("/api/v1/account/faucet/")
    assert again.status_code == 409 and again.json()["code"] == "faucet_rate_limited"
    assert APIClient().post("/api/v1/account/faucet/").status_code == 401


def test_the_statements_as_files_over_the_api_for_the_owner_only(api, alice, bob, carol, settled):
    # The same files as the pages' downloads, with a token (the command line's `statement`).
    mine = api.as_user(alice)
    csv_file = mine.get(f"/api/v1/jobs/{settled.pk}/statement/csv/")
    assert csv_file.status_code == 200 and csv_file["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(csv_file.content.decode())))
    assert dict(zip(rows[0], rows[1], strict=True))["charged_tusd"] == "0.514402"
    pdf = mine.get(f"/api/v1/jobs/{settled.pk}/statement/pdf/")
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    now = timezone.now()
    month = mine.get(f"/api/v1/account/statements/{now:%Y}-{now.month}/csv/")
    assert month.status_code == 200 and str(settled.pk) in month.content.decode()
    assert mine.get(f"/api/v1/jobs/{settled.pk}/statement/xls/").status_code == 404
    assert mine.get(f"/api/v1/account/statements/{now:%Y}-13/csv/").status_code == 404
    # Another consumer, and the provider that was paid: the job's statement is not theirs.
    for user in (bob, carol):
        assert api.as_user(user).get(f"/api/v1/jobs/{settled.pk}/statement/csv/").status_code == 404
    assert APIClient().get(f"/api/v1/jobs/{settled.pk}/statement/csv/").status_code == 401
