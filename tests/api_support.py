"""Helpers shared by the API tests (tests/test_api_*.py)."""

from datetime import timedelta
from typing import Any

from django.utils import timezone

ACTORS = ["anonymous", "alice", "bob", "carol", "dave", "admin_user"]


def actor(request, name: str):
    """The user behind an actor name of the authorization matrix (None: anonymous)."""
    return None if name == "anonymous" else request.getfixturevalue(name)


def job_body(**overrides: Any) -> dict[str, Any]:
    body = {
        "name": "Sepsis risk model",
        "template": "tabular-classifier",
        "params": {"epochs": 5},
        "dataset": "sample:breast-cancer",
        "nodes": 1,
        "gpus_per_node": 2,
        "min_gpu_memory_gb": 0,
        "gpu_models": [],
        "regions": [],
        "compliance": [],
        "min_reliability": None,
        "max_price_per_gpu_hour": "2.50",
        "budget": "100",
        "deadline": (timezone.now() + timedelta(days=2)).isoformat(),
        "duration_hours": "2",
    }
    body.update(overrides)
    return body


def assert_error(response, status: int, field: str | None = None) -> dict:
    """A 4xx in the API's one error shape, naming `field` when given."""
    assert response.status_code == status, (response.status_code, response.content[:500])
    data = response.json()
    assert isinstance(data.get("detail"), str) and data["detail"], data
    assert "code" in data and "field" in data, data
    if field is not None:
        assert data["field"] == field, data
    return data
