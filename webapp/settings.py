"""ComputeMesh settings: read once, here, from the environment.

Embedded defaults (SQLite, in-memory channel layer, in-process broker) need no setup;
production sets DATABASE_URL, REDIS_URL, SECRET_KEY, ALLOWED_HOSTS and runs with
DEBUG off, where `manage.py check --deploy --fail-level WARNING` passes. The demo runner
(webapp/devserver.py) sets REDIS_URL to its embedded Redis (unix:///…/redis.sock).

One module on purpose, though long: every setting is read here and nowhere else, so an
operator reads one file to know what can be configured (README's table follows it).
"""

from decimal import Decimal
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from marketplace import task_names

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
if (BASE_DIR / ".env").is_file():
    environ.Env.read_env(BASE_DIR / ".env", overwrite=False)


def _secret(name: str, default: str = "") -> str:
    """A secret from NAME, or read from the file NAME_FILE names (a Docker or Kubernetes
    secret); both set is a mistake. Neither set: `default`."""
    path = env.str(f"{name}_FILE", default="")
    if path and env.str(name, default=""):
        raise ImproperlyConfigured(f"Set {name} or {name}_FILE, not both.")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE: cannot read {path}: {exc}") from None
    return env.str(name, default=default)


# Off unless the dev runner (webapp/devserver.py) or the operator turns it on.
DEBUG = env.bool("DEBUG", default=False)

if DEBUG:
    SECRET_KEY = _secret("SECRET_KEY", default="dev-only-insecure-key-do-not-use-in-production")
else:
    # No production default for secrets: fail loudly when it is missing.
    SECRET_KEY = _secret("SECRET_KEY")
    if not SECRET_KEY.strip():
        raise ImproperlyConfigured("SECRET_KEY (or SECRET_KEY_FILE) is unset or empty; set it to 50+ "
                                   "random characters.")

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "channels",
    "marketplace",
]

MIDDLEWARE = [
    # /healthz, /readyz, a scraper's /metrics; request ids and latency (webapp/ops.py).
    "webapp.ops.OperationsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "webapp.urls"
ASGI_APPLICATION = "webapp.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "marketplace.context_processors.membership",
            ],
        },
    },
]

# --- Data stores -------------------------------------------------------------------
_DB_ENGINES = ("django.db.backends.postgresql", "django.db.backends.sqlite3")
# DATABASE_URL_FILE: the URL (it holds the password) from a secret file.
_database_url = _secret("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'computemesh.sqlite3'}")
try:
    _database = environ.Env.db_url_config(_database_url)
except (ValueError, KeyError) as exc:
    raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from None
if _database.get("ENGINE") not in _DB_ENGINES:
    raise ImproperlyConfigured(
        "DATABASE_URL must be postgres://user:password@host:port/name or sqlite:///path."
    )
DATABASES = {"default": _database}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Under ASGI each request may run on a different thread: CONN_MAX_AGE leaks
    # connections there, Django's own pool does not (see DESIGN.md).
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"].setdefault("OPTIONS", {})
    # Data and indexes live in memory or on SSDs: tell the planner random reads are cheap,
    # so that it uses the covering indexes of the offer search (docs/BENCHMARKS.md).
    DATABASES["default"]["OPTIONS"].setdefault("options", "-c random_page_cost=1.1")
    DATABASES["default"]["OPTIONS"]["pool"] = {
        "min_size": env.int("DATABASE_POOL_MIN", default=2),
        "max_size": env.int("DATABASE_POOL_MAX", default=20),
        "timeout": 10,
    }
elif DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"].setdefault("OPTIONS", {})
    # WAL plus a busy timeout lets the embedded demo's processes share one file.
    # IMMEDIATE transactions take the write lock up front and wait for it, instead of
    # failing with "database is locked" when a reader tries to become a writer.
    DATABASES["default"]["OPTIONS"].update({
        "timeout": 20, "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    })

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env.str("REDIS_URL", default="")

if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            # The pub/sub layer delivered every message in our measurements; the core
            # layer dropped about half under load (DESIGN.md). Ours adds batched publishing.
            "BACKEND": "webapp.channel_layer.BatchingPubSubChannelLayer",
            "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 10}]},
        }
    }
    CACHES = {"default": {"BACKEND": "webapp.cache.ReusingRedisCache", "LOCATION": REDIS_URL}}
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Celery ------------------------------------------------------------------------
# Without Redis (manage.py run without the demo runner) the broker is a folder that the
# processes share: kombu's filesystem transport. redis-py and channels-redis name a unix
# socket unix:///path (the demo's embedded Redis); kombu names it redis+socket:///path.
_redis_broker = REDIS_URL
if REDIS_URL.startswith("unix://"):
    _redis_broker = "redis+socket://" + REDIS_URL.removeprefix("unix://")
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=_redis_broker or "filesystem://")
if CELERY_BROKER_URL == "filesystem://":
    _queue_dir = BASE_DIR / "var" / "celery-queue"
    _queue_dir.mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {"data_folder_in": str(_queue_dir),
                                       "data_folder_out": str(_queue_dir)}
else:
    # Above every task's time limit and countdown, so Redis never redelivers a running task.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
CELERY_RESULT_BACKEND = None
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_TIME_LIMIT = 300
CELERY_TASK_SOFT_TIME_LIMIT = 240

# --- Auth --------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "home"
# Behind this many reverse proxies (load balancer, nginx) the client's address is the N-th
# from the right of X-Forwarded-For; 0 ignores the header, which the client writes itself
# (marketplace/services/login_throttle.client_address; DRF's throttles use the same count).
TRUSTED_PROXY_COUNT = env.int("TRUSTED_PROXY_COUNT", default=0)
if TRUSTED_PROXY_COUNT < 0:
    raise ImproperlyConfigured("TRUSTED_PROXY_COUNT is the number of proxies in front: 0 or more.")
# Failed sign-ins (the login page and the token endpoint together) allowed per account and
# per client address within LOGIN_FAILURE_WINDOW_S of the first; then refused until it ends.
LOGIN_FAILURES_PER_ACCOUNT = env.int("LOGIN_FAILURES_PER_ACCOUNT", default=10)
LOGIN_FAILURES_PER_ADDRESS = env.int("LOGIN_FAILURES_PER_ADDRESS", default=50)
LOGIN_FAILURE_WINDOW_S = env.int("LOGIN_FAILURE_WINDOW_S", default=900)

# --- Internationalisation: UTC in storage and APIs, the browser shows local time ----
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Static and uploaded files -----------------------------------------------------
STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = env.path("STATIC_ROOT", default=BASE_DIR / "var" / "static")
MEDIA_ROOT = env.path("MEDIA_ROOT", default=BASE_DIR / "var" / "media")
MEDIA_URL = "/media/"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG and env.bool("STATIC_MANIFEST", default=True)
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = DEBUG or not env.bool("STATIC_MANIFEST", default=True)

# Request bodies: bounded so an oversized payload is a 400, not a memory problem.
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DATA_UPLOAD_MAX_MEMORY_SIZE", default=1_048_576)
DATASET_MAX_BYTES = env.int("DATASET_MAX_BYTES", default=20 * 1_048_576)
# Resumable, chunked uploads of datasets and code bundles (services/uploads.py): one file
# at most UPLOAD_MAX_BYTES (10 GiB), one PATCH at most UPLOAD_CHUNK_MAX_BYTES (the server
# holds a chunk while it is received), a bundle at most BUNDLE_MAX_BYTES, and all of an
# organization's datasets, bundles and open uploads at most ORG_STORAGE_QUOTA_BYTES.
UPLOAD_MAX_BYTES = env.int("UPLOAD_MAX_BYTES", default=10 * 1024**3)
UPLOAD_CHUNK_MAX_BYTES = env.int("UPLOAD_CHUNK_MAX_BYTES", default=64 * 1_048_576)
BUNDLE_MAX_BYTES = env.int("BUNDLE_MAX_BYTES", default=100 * 1_048_576)
# A fine-tune's input weights file (a torch state_dict, services/weights.py).
WEIGHTS_MAX_BYTES = env.int("WEIGHTS_MAX_BYTES", default=2 * 1024**3)
ORG_STORAGE_QUOTA_BYTES = env.int("ORG_STORAGE_QUOTA_BYTES", default=50 * 1024**3)
# An unfinished upload untouched this long is discarded (its bytes and its quota) when its
# organization next starts one.
UPLOAD_EXPIRE_S = env.int("UPLOAD_EXPIRE_S", default=7 * 24 * 3600)
# Archives (zip datasets, zip/tar bundles) are refused past these: entries, total
# uncompressed bytes, and uncompressed/compressed ratio of any entry (zip bombs).
ARCHIVE_MAX_ENTRIES = env.int("ARCHIVE_MAX_ENTRIES", default=200_000)
ARCHIVE_MAX_UNCOMPRESSED_BYTES = env.int("ARCHIVE_MAX_UNCOMPRESSED_BYTES", default=40 * 1024**3)
ARCHIVE_MAX_RATIO = env.int("ARCHIVE_MAX_RATIO", default=200)

# --- REST API ----------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.TokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticatedOrReadOnly"],
    "DEFAULT_PARSER_CLASSES": [
        "marketplace.api.parsers.DepthLimitedJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"]
    + (["rest_framework.renderers.BrowsableAPIRenderer"] if DEBUG else []),
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "marketplace.api.pagination.StandardPagination",
    "PAGE_SIZE": 20,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "marketplace.api.exceptions.api_exception_handler",
    "DEFAULT_THROTTLE_CLASSES": [
        "rest_framework.throttling.AnonRateThrottle",
        "rest_framework.throttling.UserRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": env.str("THROTTLE_ANON", default="600/min"),
        "user": env.str("THROTTLE_USER", default="3000/min"),
    },
    # Unset, DRF keys anonymous throttles on the whole X-Forwarded-For header: a client that
    # rotates it gets a fresh allowance per request.
    "NUM_PROXIES": TRUSTED_PROXY_COUNT,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "ComputeMesh API",
    "DESCRIPTION": "Marketplace and control plane for decentralized AI compute.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Three models have a `status`; name their enums instead of hashing them.
    "ENUM_NAME_OVERRIDES": {
        "JobStatusEnum": "marketplace.models.Job.Status",
        "NodeStatusEnum": "marketplace.models.Node.Status",
        "OfferStatusEnum": "marketplace.models.Offer.Status",
    },
    # Every operation's error answers, in the one error shape (marketplace/api/schema.py).
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums",
                             "marketplace.api.schema.error_responses_hook"],
}

# --- Platform ----------------------------------------------------------------------
# Seconds without a heartbeat after which a node counts as offline.
NODE_HEARTBEAT_TIMEOUT_S = env.int("NODE_HEARTBEAT_TIMEOUT_S", default=15)
# A node lost once during a job (its agent restarted, its network dropped) may be placed on
# that job again this long after the loss; lost twice, it is left out (selectors/exclusions.py).
NODE_LOST_READMIT_S = env.int("NODE_LOST_READMIT_S", default=60)
# A job about to resume waits at most this long for its newest checkpoint's check (verify
# queue), so that it resumes from that checkpoint instead of an older one.
CHECKPOINT_CHECK_WAIT_S = env.int("CHECKPOINT_CHECK_WAIT_S", default=300)
# DiLoCo: an outer round goes on without a node whose heartbeat to rank 0 stopped this long.
DILOCO_PEER_TIMEOUT_S = env.int("DILOCO_PEER_TIMEOUT_S", default=15)
PLATFORM_FEE_BPS = env.int("PLATFORM_FEE_BPS", default=500)
# Jobs wait for their escrow to be funded on the chain before they are matched. Off, a
# submitted job counts as funded at once (a private cluster without payments; most tests).
ESCROW_ENABLED = env.bool("ESCROW_ENABLED", default=True)

# --- Chain (payments) ----------------------------------------------------------------
# Empty: an in-process EVM (eth-tester, py-evm); `make demo` serves one to its processes.
CHAIN_RPC_URL = env.str("CHAIN_RPC_URL", default="")
CHAIN_RPC_TIMEOUT_S = env.float("CHAIN_RPC_TIMEOUT_S", default=10.0)
# The platform's operator key (settles, refunds). Empty: a development key, refused by
# `check --deploy` (it is public).
CHAIN_OPERATOR_KEY = _secret("CHAIN_OPERATOR_KEY")  # or CHAIN_OPERATOR_KEY_FILE
# Production pays in an existing stablecoin (USDC): its address. Empty: `chain_deploy`
# deploys the development token tUSD.
CHAIN_TOKEN_ADDRESS = env.str("CHAIN_TOKEN_ADDRESS", default="")
# Where the platform fee is credited (a multisig). Empty: a development address, on
# development chains only (`chain_deploy` refuses any other chain without it).
CHAIN_TREASURY_ADDRESS = env.str("CHAIN_TREASURY_ADDRESS", default="")
# The contracts' other roles, by address (their keys never reach the platform): the admin
# grants and revokes roles (a cold key or multisig), the pauser pauses funding and
# settlement. Empty: the operator holds them, on development chains only; `check --deploy`
# requires admin, pauser and operator to be three different addresses.
CHAIN_ADMIN_ADDRESS = env.str("CHAIN_ADMIN_ADDRESS", default="")
CHAIN_PAUSER_ADDRESS = env.str("CHAIN_PAUSER_ADDRESS", default="")
CHAIN_CONFIRMATIONS = env.int("CHAIN_CONFIRMATIONS", default=1)
CHAIN_RECEIPT_TIMEOUT_S = env.float("CHAIN_RECEIPT_TIMEOUT_S", default=60.0)
CHAIN_RESEND_AFTER_S = env.float("CHAIN_RESEND_AFTER_S", default=30.0)
CHAIN_LOG_RANGE = env.int("CHAIN_LOG_RANGE", default=2000)
CHAIN_EXPLORER_TX_URL = env.str("CHAIN_EXPLORER_TX_URL", default="")  # e.g. https://…/tx/{hash}
# How often finished jobs are settled, in one batch transaction of at most this many jobs.
SETTLEMENT_INTERVAL_S = env.float("SETTLEMENT_INTERVAL_S", default=10.0)
SETTLEMENT_BATCH_MAX = env.int("SETTLEMENT_BATCH_MAX", default=100)
# A consumer may reclaim an unsettled escrow this long after the job's deadline.
ESCROW_RECLAIM_AFTER_S = env.int("ESCROW_RECLAIM_AFTER_S", default=7 * 24 * 3600)
# A job stops (checkpoints and settles) this long before its escrow's reclaim deadline at
# the latest, so that its settlement lands before the consumer may take the deposit back;
# a job whose time to its deadline is shorter than what its budget buys (capped by its
# expected duration) is not matched (services/deadlines.py).
DEADLINE_SETTLE_MARGIN_S = env.int("DEADLINE_SETTLE_MARGIN_S", default=3600)
# A new payout wallet takes effect this long after an organization admin asks for it
# (services/wallets.py); settlements until then pay the old one.
PAYOUT_CHANGE_DELAY_S = env.int("PAYOUT_CHANGE_DELAY_S", default=48 * 3600)
# Encrypts custodial (development) wallet keys at rest; derived from SECRET_KEY when unset.
# Provider stake (contracts/src/ProviderStake.sol): the delay between a withdrawal request
# and the withdrawal (fixed at deployment); a slash for a dispute takes the disputed work's
# value × SLASH_FACTOR (at least SLASH_MIN tUSD), capped at the provider's stake.
STAKE_WITHDRAW_DELAY_S = env.int("STAKE_WITHDRAW_DELAY_S", default=7 * 24 * 3600)
SLASH_FACTOR = Decimal(env.str("SLASH_FACTOR", default="2"))
SLASH_MIN = Decimal(env.str("SLASH_MIN", default="1"))
# A job requiring a verified compliance tag is matched only to providers with this stake.
MIN_STAKE_FOR_VERIFIED_TAGS = Decimal(env.str("MIN_STAKE_FOR_VERIFIED_TAGS", default="0"))
# Reputation (services/reputation.py): the window, and the least history that is not "new".
REPUTATION_WINDOW_DAYS = env.int("REPUTATION_WINDOW_DAYS", default=30)
REPUTATION_MIN_ASSIGNMENTS = env.int("REPUTATION_MIN_ASSIGNMENTS", default=3)
REPUTATION_INTERVAL_S = env.float("REPUTATION_INTERVAL_S", default=600.0)
WALLET_ENCRYPTION_KEY = _secret("WALLET_ENCRYPTION_KEY")  # or WALLET_ENCRYPTION_KEY_FILE
# The development faucet (services/faucet.py; development chains only): it tops a custodial
# wallet up to FAUCET_AMOUNT test tUSD, at most once every FAUCET_INTERVAL_S per organization.
FAUCET_AMOUNT = Decimal(env.str("FAUCET_AMOUNT", default="1000"))
FAUCET_INTERVAL_S = env.int("FAUCET_INTERVAL_S", default=3600)
# How long a Sign-In with Ethereum nonce (linking a wallet) may be used.
SIWE_NONCE_TTL_S = env.int("SIWE_NONCE_TTL_S", default=300)
# Placements tried before a job that keeps failing is given up.
JOB_MAX_ATTEMPTS = env.int("JOB_MAX_ATTEMPTS", default=3)
# Lifetime of the token an agent uses to fetch a dataset and upload checkpoints.
ASSIGNMENT_TOKEN_TTL_S = env.int("ASSIGNMENT_TOKEN_TTL_S", default=12 * 3600)
CHECKPOINT_MAX_BYTES = env.int("CHECKPOINT_MAX_BYTES", default=512 * 1_048_576)
# What one job's checkpoints may take on the platform, all attempts together: beyond either
# an upload is refused (409, the reason), so a provider cannot fill the platform's disk.
CHECKPOINTS_MAX_PER_JOB = env.int("CHECKPOINTS_MAX_PER_JOB", default=200)
CHECKPOINT_BYTES_MAX_PER_JOB = env.int("CHECKPOINT_BYTES_MAX_PER_JOB", default=20 * 1024 * 1_048_576)



# Encrypts uploaded datasets at rest (AES-256-GCM; marketplace/services/datasets.py): 32
# random bytes, URL-safe base64 (`python -c "import base64,os;print(base64.urlsafe_b64encode(
# os.urandom(32)).decode())"`). Unset: derived from SECRET_KEY, so that a rotated SECRET_KEY
# would make the stored datasets unreadable - production sets its own.
DATASET_ENCRYPTION_KEY = _secret("DATASET_ENCRYPTION_KEY")
if DATASET_ENCRYPTION_KEY:
    import base64 as _b64
    import binascii as _binascii

    try:
        _key_ok = len(_b64.urlsafe_b64decode(DATASET_ENCRYPTION_KEY)) == 32
    except (_binascii.Error, ValueError):
        _key_ok = False
    if not _key_ok:
        raise ImproperlyConfigured("DATASET_ENCRYPTION_KEY must be 32 bytes in URL-safe base64 "
                                   "(44 characters).")

# Agents heartbeat this often; start messages not accepted after this long are resent.
AGENT_HEARTBEAT_S = env.float("AGENT_HEARTBEAT_S", default=5.0)
# Rendezvous ports a node rank 0 may name for the others (assignment.accepted): outside this
# range the platform refuses it rather than send the job's other nodes there.
AGENT_RDZV_PORT_MIN = env.int("AGENT_RDZV_PORT_MIN", default=1024)
AGENT_RDZV_PORT_MAX = env.int("AGENT_RDZV_PORT_MAX", default=65535)
if not 1 <= AGENT_RDZV_PORT_MIN <= AGENT_RDZV_PORT_MAX <= 65535:
    raise ImproperlyConfigured("need 1 <= AGENT_RDZV_PORT_MIN <= AGENT_RDZV_PORT_MAX <= 65535")
# Budget safety: how often running jobs' spend is checked; the nodes are asked to checkpoint
# and pause once the budget left covers less than BUDGET_PAUSE_LEAD_S of running; a node
# that has not paused BUDGET_PAUSE_GRACE_S later is stopped.
BUDGET_CHECK_INTERVAL_S = env.float("BUDGET_CHECK_INTERVAL_S", default=2.0)
BUDGET_PAUSE_LEAD_S = env.float("BUDGET_PAUSE_LEAD_S", default=15.0)
BUDGET_PAUSE_GRACE_S = env.float("BUDGET_PAUSE_GRACE_S", default=60.0)

# --- Periodic tasks (celery beat; webapp/celery.py reads CELERY_* from here) -----------
CELERY_BEAT_SCHEDULE = {
    "heartbeat-watchdog": {"task": task_names.HEARTBEAT_WATCHDOG, "schedule": 5.0},
    "rematch-waiting": {"task": task_names.REMATCH_WAITING, "schedule": 15.0},
    "chain-sync": {"task": task_names.CHAIN_SYNC, "schedule": 3.0},
    "verify-stale": {"task": task_names.VERIFY_STALE, "schedule": 60.0},
    "budget-watch": {"task": task_names.BUDGET_WATCH, "schedule": BUDGET_CHECK_INTERVAL_S},
    "reputations": {"task": task_names.REPUTATIONS_UPDATE, "schedule": REPUTATION_INTERVAL_S},
    "settle-pending": {"task": task_names.SETTLE_PENDING, "schedule": SETTLEMENT_INTERVAL_S},
}

# --- Verification of training work (marketplace/services/verification.py) -----------
# A replayed segment passes when its relative L2 distance to the committed checkpoint is at
# most this (honest replays measured ~0 to 4e-7 here, tampering ~1e-2: DESIGN.md).
VERIFY_REPLAY_THRESHOLD = env.float("VERIFY_REPLAY_THRESHOLD", default=1e-4)
# Replayed steps as a share of the steps trained, at most; the runtime checkpoints often
# enough that VERIFY_SEGMENTS segments fit in it.
VERIFY_REPLAY_SHARE = env.float("VERIFY_REPLAY_SHARE", default=0.1)
VERIFY_SEGMENTS = env.int("VERIFY_SEGMENTS", default=2)
# A reported held-out metric better than the platform's own evaluation by more than this
# share of it is inflated (the evaluation is deterministic: honest runs differ by ~0).
VERIFY_METRIC_TOLERANCE = env.float("VERIFY_METRIC_TOLERANCE", default=1e-3)
# A checkpoint's commitment may be applied this long after the next checkpoint's upload
# (the agent socket's ingest lags the HTTP upload) and still count.
VERIFY_COMMIT_GRACE_S = env.float("VERIFY_COMMIT_GRACE_S", default=10.0)
# Agents that announce test-only faults (COMPUTEMESH_FAULTS) are refused unless this is on:
# only the test settings turn it on, never the environment.
ALLOW_AGENT_FAULTS = False

# --- Security (check --deploy passes with DEBUG off) -------------------------------
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=not DEBUG)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = not DEBUG
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

# --- Operations (docs/operations.md) ----------------------------------------------------
# `/metrics` answers staff sessions, and scrapers sending `Authorization: Bearer <this>`.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
# A Celery worker with a port serves its processes' metrics there (private network only).
METRICS_PORT = env.int("METRICS_PORT", default=0) or None
METRICS_ADDR = env.str("METRICS_ADDR", default="0.0.0.0")
# json: one JSON object a line, with the request id and the job id (marketplace/logs.py).
LOG_FORMAT = env.str("LOG_FORMAT", default="plain")
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured("LOG_FORMAT is plain or json.")
# Celery keeps to the logging configured here (its own would drop the JSON format).
CELERY_WORKER_HIJACK_ROOT_LOGGER = LOG_FORMAT != "json"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "marketplace.logs.ContextFilter"}},
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
                   "json": {"()": "marketplace.logs.JsonFormatter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT,
                             "filters": ["context"]}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"daphne": {"level": "WARNING"}},
}
