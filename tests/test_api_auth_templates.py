"""POST /api/v1/auth/token/, GET /api/v1/templates/, the OpenAPI schema and the error shape."""

import pytest
from rest_framework.authtoken.models import Token

from marketplace import catalogue

from .api_support import ACTORS, actor, assert_error

TOKEN = "/api/v1/auth/token/"
pytestmark = pytest.mark.django_db


def test_token_for_good_credentials_authenticates_later_requests(api, alice):
    response = api.post(TOKEN, {"username": "alice", "password": "demo-pass-123"}, format="json")
    assert response.status_code == 200
    key = response.json()["token"]
    assert Token.objects.get(user=alice).key == key
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert api.get("/api/v1/jobs/").status_code == 200


def test_token_is_stable_across_logins(api, alice):
    first = api.post(TOKEN, {"username": "alice", "password": "demo-pass-123"}, format="json")
    second = api.post(TOKEN, {"username": "alice", "password": "demo-pass-123"}, format="json")
    assert first.json()["token"] == second.json()["token"]


@pytest.mark.parametrize("body", [
    {"username": "alice", "password": "wrong-password"},
    {"username": "nobody", "password": "demo-pass-123"},
])
def test_token_bad_credentials_is_400_with_message(api, alice, body):
    data = assert_error(api.post(TOKEN, body, format="json"), 400)
    assert "username and password" in data["detail"]
    assert not Token.objects.exists()


def test_token_inactive_user_is_refused(api, alice):
    alice.is_active = False
    alice.save()
    assert_error(api.post(TOKEN, {"username": "alice", "password": "demo-pass-123"},
                          format="json"), 400)


@pytest.mark.parametrize(("body", "field"), [
    ({"password": "demo-pass-123"}, "username"),
    ({"username": "alice"}, "password"),
    ({"username": "a" * 10_000, "password": "x"}, "username"),
])
def test_token_missing_or_oversized_fields_name_the_field(api, alice, body, field):
    data = assert_error(api.post(TOKEN, body, format="json"), 400, field)
    assert data["detail"].startswith(f"{field}:")
    assert field in data["errors"]


def test_token_malformed_json_and_wrong_content_type(api, alice):
    data = assert_error(api.post(TOKEN, '{"username": "alice",', content_type="application/json"),
                        400)
    assert "JSON" in data["detail"]
    data = assert_error(api.post(TOKEN, "username=alice", content_type="text/plain"), 415)
    assert "text/plain" in data["detail"]


def test_bad_token_is_401(api):
    api.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    data = assert_error(api.get("/api/v1/jobs/"), 401)
    assert data["code"] == "authentication_failed"


@pytest.mark.parametrize("who", ACTORS)
def test_templates_are_public(request, api, who):
    response = api.as_user(actor(request, who)).get("/api/v1/templates/")
    assert response.status_code == 200
    names = [t["name"] for t in response.json()]
    assert {"tabular-classifier", "load-forecast", "image-classifier"} <= set(names)


def test_template_shape_and_defaults(api):
    response = api.get("/api/v1/templates/tabular-classifier/")
    assert response.status_code == 200
    data = response.json()
    assert set(data) == {"name", "title", "sector", "description", "metric", "dataset_kind",
                         "params_schema", "defaults", "samples"}
    assert data["sector"] == "healthcare"
    assert data["defaults"]["epochs"] == catalogue.get_template("tabular-classifier").defaults()[
        "epochs"]
    assert data["params_schema"]["properties"]["epochs"]["minimum"] == 1
    assert [s["name"] for s in data["samples"]] == ["breast-cancer"]


def test_unknown_template_is_404(api):
    data = assert_error(api.get("/api/v1/templates/no-such-template/"), 404)
    assert "no-such-template" in data["detail"]


def test_templates_are_read_only(api, alice):
    response = api.as_user(alice).post("/api/v1/templates/", {"name": "x"}, format="json")
    assert response.status_code == 405


def test_openapi_schema_and_docs(api):
    response = api.get("/api/schema/")
    assert response.status_code == 200
    body = response.content.decode()
    for path in ("/api/v1/offers/", "/api/v1/jobs/quote/", "/api/v1/nodes/{id}/rotate-token/",
                 "/api/v1/datasets/", "/api/v1/auth/token/"):
        assert path in body
    assert api.get("/api/docs/").status_code == 200


def test_unknown_api_path_is_404(api):
    assert api.get("/api/v1/offers/not-a-number/").status_code == 404


def test_schema_generates_without_warnings(tmp_path):
    from django.core.management import call_command

    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--fail-on-warn", "--file", str(out))
    assert "/api/v1/jobs/{id}/cancel/" in out.read_text()
