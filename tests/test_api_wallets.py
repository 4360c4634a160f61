"""Linking wallets with Sign-In with Ethereum (EIP-4361): GET /api/v1/wallets/siwe-nonce/,
POST /api/v1/wallets/link/, GET /api/v1/wallets/. Messages are built as static/js/wallet.js
builds them and signed with eth_account, as a wallet's personal_sign (EIP-191) does."""

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone
from eth_account import Account
from eth_account.messages import encode_defunct
from rest_framework.test import APIClient

from marketplace.chain.client import chain_id
from marketplace.models import AuditEvent, SiweNonce, Wallet
from marketplace.services.wallets import SIWE_STATEMENT, wallet_create_custodial

from .factories import UserFactory

pytestmark = pytest.mark.django_db
NONCE, LINK, LIST = "/api/v1/wallets/siwe-nonce/", "/api/v1/wallets/link/", "/api/v1/wallets/"
HOST = "testserver"  # the API client's host: the domain every message must name


@pytest.fixture(autouse=True)
def _in_process_chain(settings):
    settings.CHAIN_RPC_URL = ""  # the in-process EVM: chain_id() without a node


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def siwe_text(*, address: str, nonce: str, domain: str = HOST, uri: str | None = None,
              chain: int | None = None, expires: datetime | None = None,
              statement: str = SIWE_STATEMENT) -> str:
    now = timezone.now()
    return "\n".join([
        f"{domain} wants you to sign in with your Ethereum account:", address, "", statement, "",
        f"URI: {uri or f'http://{domain}/wallets/'}", "Version: 1",
        f"Chain ID: {chain if chain is not None else chain_id()}", f"Nonce: {nonce}",
        f"Issued At: {iso(now)}", f"Expiration Time: {iso(expires or now + timedelta(minutes=5))}",
    ])


def sign(text: str, key: str) -> str:
    return "0x" + Account.sign_message(encode_defunct(text=text), key).signature.hex().removeprefix("0x")


def new_nonce(client) -> str:
    response = client.get(NONCE)
    assert response.status_code == 200, response.json()
    return response.json()["nonce"]


def link(client, account, **fields):
    """Nonce, message, signature and post, as the browser does; returns the response."""
    text = siwe_text(address=account.address, nonce=fields.pop("nonce", None) or new_nonce(client), **fields)
    return client.post(LINK, {"message": text, "signature": sign(text, account.key)}, format="json")


def assert_error(response, status: int, code: str, words: str) -> None:
    body = response.json()
    assert response.status_code == status, body
    assert body["code"] == code, body
    assert words in body["detail"], body


# --- the nonce ------------------------------------------------------------------------
def test_nonce_is_stored_for_the_user_and_says_what_to_sign(api, alice):
    client = api.as_user(alice)
    account = Account.create()
    body = client.get(NONCE, {"address": account.address.lower()}).json()
    row = SiweNonce.objects.get(nonce=body["nonce"])
    assert row.user == alice and row.used_at is None
    assert timedelta(minutes=4) < row.expires_at - timezone.now() <= timedelta(minutes=5)
    assert body["address"] == account.address  # checksummed back (wallets answer in lower case)
    assert body["domain"] == HOST and body["uri"] == f"http://{HOST}/wallets/"
    assert body["chain_id"] == chain_id() and body["statement"] == SIWE_STATEMENT
    assert len(body["nonce"]) >= 8 and body["nonce"].isalnum()
    assert client.get(NONCE).json()["nonce"] != body["nonce"]


def test_nonce_refuses_a_bad_address(api, alice):
    assert_error(api.as_user(alice).get(NONCE, {"address": "0x1234"}), 400, "invalid",
                 "not an Ethereum address")


# --- linking --------------------------------------------------------------------------
def test_consumer_links_a_wallet(api, alice, healthcare):
    client = api.as_user(alice)
    account = Account.create()
    response = link(client, account)
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["address"] == account.address and body["kind"] == "external"
    assert body["linked_by"] == "alice" and body["is_payout"] is False  # consumers are not paid
    wallet = Wallet.objects.get(address=account.address)
    assert wallet.organization == healthcare and wallet.encrypted_key == ""
    assert SiweNonce.objects.get(user=alice).used_at is not None
    assert AuditEvent.objects.filter(action="wallet.link", object_id=str(healthcare.pk)).exists()
    listed = client.get(LIST).json()
    assert [w["address"] for w in listed] == [account.address]
    assert set(listed[0]) == {"id", "address", "kind", "is_payout", "linked_by", "created_at"}


def test_a_wallet_a_provider_admin_links_becomes_its_payout_wallet_after_the_delay(
        api, carol, provider_org, settings):
    settings.PAYOUT_CHANGE_DELAY_S = 0  # the delay itself: tests/test_payout_wallets.py
    client = api.as_user(carol)
    custodial = wallet_create_custodial(organization=provider_org)
    assert custodial.is_payout  # the development wallet is, until the provider links its own
    first, second = Account.create(), Account.create()
    assert link(client, first).status_code == 201
    assert link(client, second).status_code == 201
    assert client.get(f"{LIST}payout/").json()["payout_address"] == first.address
    # …and an admin can move payouts to another of its wallets.
    wallet = Wallet.objects.get(address=second.address)
    assert client.post(f"{LIST}{wallet.pk}/payout/").status_code == 202
    kinds = {w["address"]: (w["kind"], w["is_payout"]) for w in client.get(LIST).json()}
    assert kinds == {custodial.address: ("custodial", False), first.address: ("external", False),
                     second.address: ("external", True)}


def test_linking_the_same_wallet_again_is_a_no_op(api, alice):
    client = api.as_user(alice)
    account = Account.create()
    assert link(client, account).status_code == 201
    again = link(client, account)
    assert again.status_code == 200 and again.json()["address"] == account.address
    assert Wallet.objects.filter(address=account.address).count() == 1


# --- what is refused ------------------------------------------------------------------
def test_replayed_message_is_refused(api, alice):
    client = api.as_user(alice)
    account = Account.create()
    text = siwe_text(address=account.address, nonce=new_nonce(client))
    body = {"message": text, "signature": sign(text, account.key)}
    assert client.post(LINK, body, format="json").status_code == 201
    assert_error(client.post(LINK, body, format="json"), 400, "nonce_used", "used already")


def test_expired_message_is_refused(api, alice):
    client = api.as_user(alice)
    response = link(client, Account.create(), expires=timezone.now() - timedelta(seconds=1))
    assert_error(response, 400, "message_expired", "expired")
    assert not Wallet.objects.exists()
    assert SiweNonce.objects.get(user=alice).used_at is None  # nothing was used up


def test_expired_nonce_is_refused(api, alice):
    client = api.as_user(alice)
    nonce = new_nonce(client)
    SiweNonce.objects.filter(nonce=nonce).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert_error(link(client, Account.create(), nonce=nonce), 400, "nonce_expired", "expired")


def test_wrong_domain_is_refused(api, alice):
    response = link(api.as_user(alice), Account.create(), domain="wallet-drainer.example")
    assert_error(response, 400, "wrong_domain", "wallet-drainer.example, not testserver")


def test_uri_on_another_site_is_refused(api, alice):
    response = link(api.as_user(alice), Account.create(), uri="https://wallet-drainer.example/login")
    assert_error(response, 400, "wrong_uri", "not on testserver")


def test_other_chain_is_refused(api, alice):
    assert_error(link(api.as_user(alice), Account.create(), chain=1), 400, "wrong_chain",
                 f"this platform runs on chain {chain_id()}")


def test_signature_of_another_key_is_refused(api, alice):
    client = api.as_user(alice)
    claimed, signer = Account.create(), Account.create()
    text = siwe_text(address=claimed.address, nonce=new_nonce(client))
    response = client.post(LINK, {"message": text, "signature": sign(text, signer.key)}, format="json")
    assert_error(response, 400, "bad_signature", claimed.address)
    assert not Wallet.objects.exists()


def test_message_changed_after_signing_is_refused(api, alice):
    client = api.as_user(alice)
    account = Account.create()
    text = siwe_text(address=account.address, nonce=new_nonce(client))
    tampered = text.replace(SIWE_STATEMENT, "Link this wallet to a friendly organization.")
    response = client.post(LINK, {"message": tampered, "signature": sign(text, account.key)}, format="json")
    assert_error(response, 400, "bad_signature", "not")


def test_malformed_message_and_signature_are_refused(api, alice):
    client = api.as_user(alice)
    account = Account.create()
    response = client.post(LINK, {"message": "please link me", "signature": sign("x", account.key)},
                           format="json")
    assert_error(response, 400, "malformed_message", "not a Sign-In with Ethereum")
    text = siwe_text(address=account.address, nonce=new_nonce(client))
    response = client.post(LINK, {"message": text, "signature": "0x1234"}, format="json")
    assert response.status_code == 400 and response.json()["field"] == "signature"


def test_nonce_issued_to_someone_else_is_refused(api, alice, bob):
    alices_nonce = new_nonce(api.as_user(alice))
    response = link(api.as_user(bob), Account.create(), nonce=alices_nonce)
    assert_error(response, 400, "unknown_nonce", "not issued to you")
    assert_error(link(api.as_user(bob), Account.create(), nonce="a" * 32), 400, "unknown_nonce", "")


def test_wallet_of_another_organization_is_refused_with_409(api, alice, bob):
    account = Account.create()
    assert link(api.as_user(alice), account).status_code == 201
    response = link(api.as_user(bob), account)
    assert_error(response, 409, "wallet_taken", "linked to another organization")
    assert Wallet.objects.get(address=account.address).organization.name == "Medisight"


def test_not_signed_in_is_401(api, db):
    client = api.as_user(None)
    assert client.get(NONCE).status_code == 401
    assert client.get(LIST).status_code == 401
    assert client.post(LINK, {"message": "x", "signature": "0x"}, format="json").status_code == 401
    assert not SiweNonce.objects.exists()


def test_user_without_organization_cannot_link(api, db):
    loner = UserFactory(username="erin")
    client = api.as_user(loner)
    assert_error(link(client, Account.create()), 403, "permission_denied", "organization")
    assert client.get(LIST).json() == []


def test_session_posts_need_the_csrf_token(alice):
    """The browser posts with its session: without the CSRF token it is refused."""
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(alice)
    account = Account.create()
    text = siwe_text(address=account.address, nonce=client.get(NONCE).json()["nonce"])
    body = {"message": text, "signature": sign(text, account.key)}
    assert client.post(LINK, body, format="json").status_code == 403
    client.get("/wallets/")  # sets the CSRF cookie, as the page does
    token = client.cookies["csrftoken"].value
    assert client.post(LINK, body, format="json", HTTP_X_CSRFTOKEN=token).status_code == 201


# --- scoping --------------------------------------------------------------------------
def test_organizations_see_and_use_only_their_wallets(api, alice, bob, carol, dave, provider_org):
    alices, carols = Account.create(), Account.create()
    link(api.as_user(alice), alices)
    link(api.as_user(carol), carols)
    wallet_create_custodial(organization=provider_org)
    assert [w["address"] for w in api.as_user(bob).get(LIST).json()] == []
    assert [w["address"] for w in api.as_user(alice).get(LIST).json()] == [alices.address]
    carol_wallet = Wallet.objects.get(address=carols.address)
    other = Wallet.objects.get(organization=provider_org, kind="custodial")
    # Another provider cannot make carol's wallet its payout wallet, nor see it.
    assert api.as_user(dave).post(f"{LIST}{carol_wallet.pk}/payout/").status_code == 404
    assert api.as_user(dave).post(f"{LIST}{other.pk}/payout/").status_code == 404
    assert Wallet.objects.get(organization=provider_org, is_payout=True) == carol_wallet
    # A consumer has no payout wallet to choose.
    alice_wallet = Wallet.objects.get(address=alices.address)
    assert api.as_user(alice).post(f"{LIST}{alice_wallet.pk}/payout/").status_code == 403


def test_custodial_key_never_leaves_the_api(api, carol, provider_org):
    wallet = wallet_create_custodial(organization=provider_org)
    raw = api.as_user(carol).get(LIST).content.decode()
    assert wallet.address in raw and wallet.encrypted_key not in raw and "key" not in raw
