"""/api/v1/nodes/: a provider's own machines; the agent token is shown once."""

import pytest

from marketplace import catalogue
from marketplace.models import AuditEvent, Node
from marketplace.services.nodes import hash_token, node_by_token

from .api_support import actor, assert_error
from .factories import NodeFactory

URL = "/api/v1/nodes/"
pytestmark = pytest.mark.django_db
FIELDS = {"id", "name", "gpu_model", "gpu_count", "gpu_memory_gb", "cpu_cores", "ram_gb",
          "disk_gb", "bandwidth_mbps", "region", "compliance_claimed", "compliance_verified",
          "status", "last_heartbeat_at", "benchmark_tflops", "agent_version", "runtime", "reliability",
          "is_new",
          "reliability_detail", "reliability_at", "token_prefix", "created_at"}


def node_body(**overrides):
    return {"name": "rack-1", "gpu_model": "RTX 4090", "gpu_count": 4, "cpu_cores": 32,
            "ram_gb": 128, "disk_gb": 2000, "region": "EU-FR",
            "compliance_claimed": ["gdpr"], **overrides}


@pytest.mark.parametrize(("who", "expected"), [
    ("anonymous", 401), ("alice", 403), ("bob", 403), ("carol", 201), ("dave", 201),
    ("admin_user", 403),
])
def test_create_matrix(request, api, who, expected):
    response = api.as_user(actor(request, who)).post(URL, node_body(), format="json")
    assert response.status_code == expected, response.content
    assert Node.objects.count() == (1 if expected == 201 else 0)


def test_create_returns_the_token_once_and_stores_only_its_hash(api, carol, provider_org):
    client = api.as_user(carol)
    response = client.post(URL, node_body(bandwidth_mbps=1000), format="json")
    assert response.status_code == 201
    data = response.json()
    assert set(data) == FIELDS | {"agent_token"}
    token = data["agent_token"]
    node = Node.objects.get(pk=data["id"])
    assert node.provider == provider_org
    assert node.token_hash == hash_token(token) and token not in node.token_hash
    assert data["token_prefix"] == token[:10] == node.token_prefix
    assert node_by_token(token) == node
    # Defaults and normalisation by the service.
    assert data["gpu_memory_gb"] == 24 and data["status"] == "pending"
    assert data["compliance_claimed"] == ["gdpr"] and data["compliance_verified"] == []
    assert data["reliability"] is None and data["bandwidth_mbps"] == 1000
    # Never again.
    assert "agent_token" not in client.get(f"{URL}{node.pk}/").json()
    listed = client.get(URL).json()["results"]
    assert node.pk in [n["id"] for n in listed]  # the new node is in the list checked below
    assert all("agent_token" not in n for n in listed)
    assert AuditEvent.objects.filter(action="node.create", object_id=str(node.pk)).exists()


def test_cpu_node(api, carol):
    response = api.as_user(carol).post(URL, node_body(name="cpu-box", gpu_model="cpu",
                                                      gpu_count=8), format="json")
    assert response.status_code == 201
    assert response.json()["gpu_memory_gb"] == 0


@pytest.mark.parametrize(("who", "expected"), [
    ("anonymous", 401), ("alice", 403), ("bob", 403), ("carol", 200), ("dave", 200),
    ("admin_user", 403),
])
def test_list_matrix_shows_only_own_nodes(request, api, carol_node, dave_node, who, expected):
    response = api.as_user(actor(request, who)).get(URL)
    assert response.status_code == expected
    if expected == 200:
        names = [n["name"] for n in response.json()["results"]]
        assert names == (["carol-a100"] if who == "carol" else ["dave-4090"])


@pytest.mark.parametrize(("who", "expected"), [
    ("anonymous", 401), ("alice", 403), ("bob", 403), ("carol", 200), ("dave", 404),
    ("admin_user", 403),
])
def test_retrieve_matrix(request, api, carol_node, who, expected):
    response = api.as_user(actor(request, who)).get(f"{URL}{carol_node.pk}/")
    assert response.status_code == expected
    if expected == 200:
        assert set(response.json()) == FIELDS and response.json()["name"] == "carol-a100"


@pytest.mark.parametrize(("who", "expected"), [
    ("anonymous", 401), ("alice", 403), ("bob", 403), ("carol", 200), ("dave", 404),
    ("admin_user", 403),
])
def test_patch_matrix(request, api, carol_node, who, expected):
    response = api.as_user(actor(request, who)).patch(f"{URL}{carol_node.pk}/",
                                                      {"name": "renamed"}, format="json")
    assert response.status_code == expected
    carol_node.refresh_from_db()
    assert carol_node.name == ("renamed" if expected == 200 else "carol-a100")


def test_patch_keeps_other_fields_and_updates_the_offers_search_columns(api, carol, carol_node,
                                                                       carol_offer):
    response = api.as_user(carol).patch(f"{URL}{carol_node.pk}/",
                                        {"region": "EU-FI", "compliance_claimed": ["hipaa"]},
                                        format="json")
    assert response.status_code == 200, response.content
    carol_node.refresh_from_db()
    assert (carol_node.region, carol_node.gpu_model, carol_node.gpu_count) == (
        "EU-FI", "A100 80GB", 8)
    assert carol_node.claimed_tags == ["hipaa"]
    carol_offer.refresh_from_db()
    assert carol_offer.region == "EU-FI"


def test_patch_model_without_memory_takes_the_new_models_memory(api, carol, carol_node):
    response = api.as_user(carol).patch(f"{URL}{carol_node.pk}/", {"gpu_model": "RTX 4090"},
                                        format="json")
    assert response.status_code == 200
    assert response.json()["gpu_memory_gb"] == catalogue.GPU_MODELS["RTX 4090"]


def test_put_needs_every_field(api, carol, carol_node):
    assert_error(api.as_user(carol).put(f"{URL}{carol_node.pk}/", {"name": "x"}, format="json"),
                 400)
    response = api.as_user(carol).put(f"{URL}{carol_node.pk}/",
                                      node_body(name="carol-a100", gpu_model="A100 80GB",
                                                gpu_count=8), format="json")
    assert response.status_code == 200
    carol_node.refresh_from_db()
    assert (carol_node.region, carol_node.gpu_memory_gb) == ("EU-FR", 80)


def test_node_cannot_shrink_below_its_offers(api, carol, carol_node, carol_offer):
    data = assert_error(api.as_user(carol).patch(f"{URL}{carol_node.pk}/", {"gpu_count": 2},
                                                 format="json"), 400, "gpu_count")
    assert "offers" in data["detail"]
    carol_node.refresh_from_db()
    assert carol_node.gpu_count == 8


@pytest.mark.parametrize(("override", "field"), [
    ({"name": ""}, "name"),
    ({"name": "n" * 10_000}, "name"),
    ({"gpu_model": "GTX 1080"}, "gpu_model"),
    ({"region": "XX-ZZ"}, "region"),
    ({"region": "EU"}, "region"),  # a node is in one country, not a bloc
    ({"gpu_count": 0}, "gpu_count"),
    ({"gpu_count": -1}, "gpu_count"),
    ({"gpu_count": 65}, "gpu_count"),
    ({"gpu_count": "many"}, "gpu_count"),
    ({"gpu_memory_gb": 0}, "gpu_memory_gb"),
    ({"gpu_memory_gb": 5000}, "gpu_memory_gb"),
    ({"cpu_cores": 0}, "cpu_cores"),
    ({"ram_gb": -4}, "ram_gb"),
    ({"disk_gb": None}, "disk_gb"),
    ({"bandwidth_mbps": 10**15}, "bandwidth_mbps"),
    ({"compliance_claimed": ["pci"]}, "compliance_claimed"),
    ({"compliance_claimed": "gdpr"}, "compliance_claimed"),
])
def test_create_bad_input_is_400_naming_the_field(api, carol, override, field):
    response = api.as_user(carol).post(URL, node_body(**override), format="json")
    assert_error(response, 400, field)
    assert not Node.objects.exists()


def test_duplicate_name_is_400(api, carol, carol_node):
    data = assert_error(api.as_user(carol).post(URL, node_body(name="carol-a100"), format="json"),
                        400, "name")
    assert "already" in data["detail"]
    assert Node.objects.count() == 1


def test_same_name_as_another_providers_node_is_fine(api, carol, dave_node):
    assert api.as_user(carol).post(URL, node_body(name="dave-4090"), format="json"
                                   ).status_code == 201


def test_malformed_and_oversized_bodies(api, carol, settings):
    client = api.as_user(carol)
    assert_error(client.post(URL, "{not json", content_type="application/json"), 400)
    assert_error(client.post(URL, "name=x", content_type="text/plain"), 415)
    huge = '{"name": "%s"}' % ("x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1))
    assert_error(client.post(URL, huge, content_type="application/json"), 413)
    assert not Node.objects.exists()


@pytest.mark.parametrize(("who", "expected"), [
    ("anonymous", 401), ("alice", 403), ("bob", 403), ("carol", 200), ("dave", 404),
    ("admin_user", 403),
])
def test_rotate_token_matrix(request, api, carol_node, who, expected):
    before = carol_node.token_hash
    response = api.as_user(actor(request, who)).post(f"{URL}{carol_node.pk}/rotate-token/")
    assert response.status_code == expected
    carol_node.refresh_from_db()
    if expected == 200:
        token = response.json()["agent_token"]
        assert carol_node.token_hash == hash_token(token) != before
        assert response.json()["token_prefix"] == token[:10]
    else:
        assert carol_node.token_hash == before


def test_rotated_token_replaces_the_old_one(api, carol):
    client = api.as_user(carol)
    old = client.post(URL, node_body(), format="json").json()
    new = client.post(f"{URL}{old['id']}/rotate-token/").json()
    assert node_by_token(new["agent_token"]).pk == old["id"]
    with pytest.raises(Exception, match="Unknown or revoked"):
        node_by_token(old["agent_token"])


def test_nodes_cannot_be_deleted(api, carol, carol_node):
    assert api.as_user(carol).delete(f"{URL}{carol_node.pk}/").status_code == 405
    assert Node.objects.filter(pk=carol_node.pk).exists()


def test_suspended_provider_org_is_403(api, carol, provider_org, carol_node):
    provider_org.is_suspended = True
    provider_org.save()
    data = assert_error(api.as_user(carol).get(URL), 403)
    assert "suspended" in data["detail"]


def test_list_query_count_is_constant(api, carol, provider_org, django_assert_max_num_queries):
    for i in range(30):
        NodeFactory(provider=provider_org, name=f"n{i}")
    client = api.as_user(carol)
    with django_assert_max_num_queries(5):
        assert client.get(URL).json()["count"] == 30
