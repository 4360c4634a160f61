"""Fixed actors (STYLE.md): alice consumer, bob other consumer, carol provider, dave other
provider, admin staff. Tests run on PostgreSQL (webapp/settings_test.py)."""

import threading
from datetime import timedelta

import pytest
from django.db import close_old_connections
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from marketplace.models import Organization

from .factories import NodeFactory, OfferFactory, OrganizationFactory, UserFactory
from .platform_logs import platform_logs_clean  # noqa: F401  (autouse: platform logs read at teardown)

pytest_plugins = ["tests.pool_watch"]

# Time limits (pytest-timeout) by layer, for tests that do not name their own: the default
# in pyproject.toml (300 s) suits unit and single-process tests; a full stack waits minutes
# for real training; the chaos suite and the `slow` 10-minute runs take longer still.
LAYER_TIMEOUTS_S = {"slow": 1800, "chaos": 1800, "integration": 900}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("timeout") is not None:
            continue
        limits = [s for name, s in LAYER_TIMEOUTS_S.items() if item.get_closest_marker(name)]
        if limits:
            item.add_marker(pytest.mark.timeout(max(limits)))


def _close_off_the_main_thread():
    if threading.current_thread() is not threading.main_thread():
        close_old_connections()


@pytest.fixture(autouse=True, scope="session")
def _consumers_return_their_connections():
    """channels.testing's communicators make channels.db.close_old_connections a no-op while
    they run the application (so that a TestCase's own connection survives). So every
    connection a consumer opened off the main thread stayed checked out of the pool: one per
    handshake on the socket's threads, and for good once a test's event loop ended its
    executor's threads (a full run had 19 of 20 out, tests/pool_watch.py). Daphne has no such
    patch: there those threads return theirs after every call, and here now too; the test's
    connection, on the main thread, is still spared."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("channels.testing.application.no_op", _close_off_the_main_thread)
        yield


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Throttles, debounces and explanation timers live in the cache: start each test clean."""
    from django.core.cache import cache

    cache.clear()
    yield


@pytest.fixture
def healthcare(db):
    return OrganizationFactory(name="Medisight", slug="medisight",
                               kind=Organization.Kind.CONSUMER,
                               sector=Organization.Sector.HEALTHCARE)


@pytest.fixture
def energy(db):
    return OrganizationFactory(name="GridCast", slug="gridcast", kind=Organization.Kind.CONSUMER,
                               sector=Organization.Sector.ENERGY)


@pytest.fixture
def provider_org(db):
    return OrganizationFactory(name="Nordic GPU", slug="nordic-gpu",
                               kind=Organization.Kind.PROVIDER,
                               sector=Organization.Sector.OTHER)


@pytest.fixture
def other_provider_org(db):
    return OrganizationFactory(name="Render Farm SG", slug="render-farm-sg",
                               kind=Organization.Kind.PROVIDER,
                               sector=Organization.Sector.OTHER)


@pytest.fixture
def alice(healthcare):
    return UserFactory(username="alice", organization=healthcare)


@pytest.fixture
def bob(energy):
    return UserFactory(username="bob", organization=energy)


@pytest.fixture
def carol(provider_org):
    return UserFactory(username="carol", organization=provider_org)


@pytest.fixture
def dave(other_provider_org):
    return UserFactory(username="dave", organization=other_provider_org)


@pytest.fixture
def admin_user(db):
    return UserFactory(username="admin", is_staff=True, is_superuser=True)


@pytest.fixture
def api():
    """An API client; `api.as_user(u)` authenticates with u's token."""
    client = APIClient()

    def as_user(user):
        client.credentials()
        if user is not None:
            token, _ = Token.objects.get_or_create(user=user)
            client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
        return client

    client.as_user = as_user
    return client


@pytest.fixture
def carol_node(carol, provider_org):
    return NodeFactory(provider=provider_org, name="carol-a100", gpu_model="A100 80GB",
                       gpu_count=8, gpu_memory_gb=80, region="EU-DE")


@pytest.fixture
def carol_offer(carol_node):
    return OfferFactory(node=carol_node)


@pytest.fixture
def dave_node(dave, other_provider_org):
    return NodeFactory(provider=other_provider_org, name="dave-4090", gpu_model="RTX 4090",
                       gpu_count=4, gpu_memory_gb=24, region="AP-SG")


@pytest.fixture
def dave_offer(dave_node):
    return OfferFactory(node=dave_node)


@pytest.fixture
def future():
    return timezone.now() + timedelta(days=3)
