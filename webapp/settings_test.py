"""Test settings: production settings with what only slows tests or needs TLS turned off."""

import os

os.environ.setdefault("SECRET_KEY", "test-only-secret-key-" + "x" * 40)
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/computemesh")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
os.environ.setdefault("ALLOWED_HOSTS", "testserver,127.0.0.1,localhost")
os.environ.setdefault("STATIC_MANIFEST", "0")
# Most tests are about matching and running jobs, not paying for them: a submitted job
# counts as funded. The payment tests turn the escrow on (tests/payments/).
os.environ.setdefault("ESCROW_ENABLED", "0")
_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("MEDIA_ROOT", os.path.join(_root, "var", "test-media"))

from .settings import *  # noqa: E402,F403

SECURE_SSL_REDIRECT = False
SESSION_COOKIE_SECURE = False
CSRF_COOKIE_SECURE = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
REST_FRAMEWORK = {**REST_FRAMEWORK, "DEFAULT_THROTTLE_CLASSES": []}  # noqa: F405
# The verification tests run agents that misbehave on purpose (COMPUTEMESH_FAULTS).
ALLOW_AGENT_FAULTS = True
