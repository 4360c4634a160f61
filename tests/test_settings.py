"""Settings read the environment once and fail loudly (STYLE.md 7), and the production
settings pass Django's deployment checks. Each case runs `manage.py` in a fresh process,
because settings are read once per process."""

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from eth_account import Account

ROOT = Path(__file__).resolve().parent.parent
TEST_DATABASE_URL = os.environ.get(
    "DATABASE_URL", "postgres://postgres@127.0.0.1:5432/computemesh"
)
# What settings.py reads; none of it may leak from this test process into the children.
SETTINGS_VARS = ("DEBUG", "SECRET_KEY", "ALLOWED_HOSTS", "DATABASE_URL", "REDIS_URL",
                 "CELERY_BROKER_URL", "CELERY_TASK_ALWAYS_EAGER", "STATIC_MANIFEST",
                 "SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE",
                 "SECURE_HSTS_SECONDS", "CSRF_TRUSTED_ORIGINS", "DJANGO_SETTINGS_MODULE",
                 "ESCROW_ENABLED", "CHAIN_RPC_URL", "CHAIN_OPERATOR_KEY", "CHAIN_TREASURY_ADDRESS",
                 "CHAIN_ADMIN_ADDRESS", "CHAIN_PAUSER_ADDRESS")


def production_env(**overrides: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in SETTINGS_VARS and k != "DJANGO_ALLOW_ASYNC_UNSAFE"}
    env.update(
        DJANGO_SETTINGS_MODULE="webapp.settings",
        DEBUG="0",
        SECRET_KEY=secrets.token_urlsafe(50),
        ALLOWED_HOSTS="example.com",
        DATABASE_URL=TEST_DATABASE_URL,
        CHAIN_RPC_URL="https://rpc.example.com", CHAIN_OPERATOR_KEY="0x" + secrets.token_hex(32),
        CHAIN_TREASURY_ADDRESS="0x" + secrets.token_hex(20), CHAIN_ADMIN_ADDRESS="0x" + secrets.token_hex(20),
        CHAIN_PAUSER_ADDRESS="0x" + secrets.token_hex(20),
    )
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def dotenv_sets(name: str) -> bool:
    """settings.py also reads ROOT/.env; a developer's .env can supply what a test removes."""
    dotenv = ROOT / ".env"
    return dotenv.exists() and re.search(
        rf"^\s*(export\s+)?{name}\s*=", dotenv.read_text(), re.MULTILINE) is not None


def test_production_settings_pass_check_deploy():
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=production_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_check_deploy_fails_on_a_development_chain_in_production():
    # --fail-level ERROR: these are errors, not warnings a deployment could wave through.
    result = manage("check", "--deploy", "--fail-level", "ERROR",
                    env=production_env(CHAIN_RPC_URL=None, CHAIN_OPERATOR_KEY=None))
    assert result.returncode != 0
    assert "computemesh.E001" in result.stderr and "computemesh.E002" in result.stderr


def test_check_deploy_fails_without_a_treasury_or_with_one_key_for_every_role():
    """Issue 12, items 3 and 10: unset, the treasury was a development address whose key is
    derived from a public string, and the operator's hot key was admin and pauser too."""
    result = manage("check", "--deploy", "--fail-level", "ERROR", env=production_env(
        CHAIN_TREASURY_ADDRESS=None, CHAIN_ADMIN_ADDRESS=None, CHAIN_PAUSER_ADDRESS=None))
    assert result.returncode != 0
    for setting in ("CHAIN_TREASURY_ADDRESS", "CHAIN_ADMIN_ADDRESS", "CHAIN_PAUSER_ADDRESS"):
        assert f"{setting} is empty" in result.stderr, result.stderr
    key = "0x" + secrets.token_hex(32)
    operator = Account.from_key(key).address
    result = manage("check", "--deploy", "--fail-level", "ERROR", env=production_env(
        CHAIN_OPERATOR_KEY=key, CHAIN_ADMIN_ADDRESS=operator, CHAIN_PAUSER_ADDRESS=operator.lower()))
    assert result.returncode != 0
    assert "computemesh.E004" in result.stderr and "admin, operator, pauser" in result.stderr


@pytest.mark.parametrize("debug", ["0", None], ids=["DEBUG=0", "DEBUG-unset"])
def test_missing_secret_key_is_refused_without_debug(debug):
    if dotenv_sets("SECRET_KEY"):
        pytest.skip(".env sets SECRET_KEY")
    result = manage("check", env=production_env(DEBUG=debug, SECRET_KEY=None))
    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr.strip().splitlines()[-1]
    assert "System check identified" not in result.stdout


def test_empty_secret_key_is_refused_without_debug():
    result = manage("check", env=production_env(SECRET_KEY=""))
    assert result.returncode != 0, "an empty SECRET_KEY was accepted with DEBUG off"
    assert "SECRET_KEY" in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("url", [
    "not-a-url",
    "postgres://postgres@127.0.0.1:notaport/computemesh",
    "nosuchdb://user@host/name",
])
def test_bad_database_url_fails_loudly(url):
    result = manage("check", env=production_env(DATABASE_URL=url))
    assert result.returncode != 0, f"DATABASE_URL={url!r} was accepted"
    # The error itself (the last line), not just a traceback line, names the variable.
    assert "DATABASE_URL" in result.stderr.strip().splitlines()[-1], result.stderr[-2000:]


def test_compose_runs_every_django_service_from_one_definition():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    django_services = {"migrate", "web", "worker", "chain-worker", "beat"}
    assert django_services <= set(services)
    anchor = compose["x-django"]
    for name in django_services:
        service = services[name]
        assert service["build"] == anchor["build"], name
        for var in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "ALLOWED_HOSTS",
                    "CHAIN_RPC_URL"):
            assert var in service["environment"], (name, var)
        assert service["environment"]["DEBUG"] == "0", name
    # The hot wallet has a single sender (DESIGN.md, reliability rules).
    chain = services["chain-worker"]["command"]
    assert chain[chain.index("-Q") + 1] == "chain"
    assert chain[chain.index("--concurrency") + 1] == "1"
    worker = services["worker"]["command"]
    assert "chain" not in worker[worker.index("-Q") + 1].split(",")
    for backing in ("postgres", "redis"):
        assert "healthcheck" in services[backing], backing


def test_secrets_can_come_from_files(tmp_path):
    """SECRET_KEY_FILE, DATABASE_URL_FILE and the chain's operator key file (Docker or
    Kubernetes secrets) stand in for the variables; the production checks still pass."""
    key, operator = secrets.token_urlsafe(50), "0x" + secrets.token_hex(32)
    files = {"SECRET_KEY": key, "DATABASE_URL": TEST_DATABASE_URL, "CHAIN_OPERATOR_KEY": operator}
    for name, value in files.items():
        (tmp_path / name).write_text(value + "\n")  # a trailing newline, as editors leave it
    env = production_env(**{name: None for name in files},
                         **{f"{name}_FILE": str(tmp_path / name) for name in files})
    result = manage("shell", "-c", "from django.conf import settings as s; "
                    "print(s.SECRET_KEY, s.DATABASES['default']['NAME'], s.CHAIN_OPERATOR_KEY)", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    database = TEST_DATABASE_URL.rsplit("/", 1)[1]
    assert result.stdout.strip().splitlines()[-1].split() == [key, database, operator]
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=env)
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_secret_set_both_ways_is_refused(tmp_path):
    (tmp_path / "key").write_text(secrets.token_urlsafe(50))
    result = manage("check", env=production_env(SECRET_KEY_FILE=str(tmp_path / "key")))
    assert result.returncode != 0, "SECRET_KEY and SECRET_KEY_FILE were both accepted"
    assert "SECRET_KEY or SECRET_KEY_FILE, not both" in result.stderr.strip().splitlines()[-1]
    result = manage("check", env=production_env(SECRET_KEY=None, SECRET_KEY_FILE=str(tmp_path / "none")))
    assert result.returncode != 0, "an unreadable SECRET_KEY_FILE was accepted"
    assert "SECRET_KEY_FILE" in result.stderr.strip().splitlines()[-1]


def test_the_beat_schedule_comes_from_settings():
    """webapp/celery.py takes the beat schedule from settings, whose intervals come from the
    environment once; every scheduled task is a registered task."""
    env = production_env(BUDGET_CHECK_INTERVAL_S="7", SETTLEMENT_INTERVAL_S="11")
    result = manage("shell", "-c", "from webapp.celery import app; s = app.conf.beat_schedule; "
                    "print(s['budget-watch']['schedule'], s['settle-pending']['schedule'], "
                    "s['reputations']['schedule'])", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1].split() == ["7.0", "11.0", "600.0"]


def test_every_task_name_is_a_registered_task():
    from django.conf import settings

    from marketplace import task_names
    from webapp.celery import app

    app.loader.import_default_modules()
    names = {value for key, value in vars(task_names).items() if key.isupper()}
    assert names - set(app.tasks) == set()
    assert {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()} <= names
    assert app.conf.beat_schedule == settings.CELERY_BEAT_SCHEDULE
