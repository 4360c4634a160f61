# The image of every Django service in docker-compose.yml (web, workers, beat). Built plain
# (no torch) for all of them but the verify worker, which is built with EXTRAS=verify.
FROM python:3.11-slim

ARG EXTRAS=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DJANGO_SETTINGS_MODULE=webapp.settings

WORKDIR /app

# The verify worker replays consumers' own tasks (code bundles) inside bubblewrap, the
# sandbox the agents use (workers/verify/sandboxed.py); run it with user namespaces allowed
# (docker-compose's verify-worker: security_opt). The other images do not need it.
RUN case ",${EXTRAS}," in *,verify,*) \
      apt-get update -q && apt-get install -y -q --no-install-recommends bubblewrap \
      && rm -rf /var/lib/apt/lists/* ;; esac

# Dependencies first, so that a code change does not reinstall them.
COPY pyproject.toml README.md ./
COPY webapp/__init__.py webapp/
COPY marketplace/__init__.py marketplace/
COPY workers/__init__.py workers/
RUN pip install ".${EXTRAS:+[$EXTRAS]}" && pip uninstall -y computemesh

COPY . .
RUN pip install --no-deps . \
    # Settings need a secret even for collectstatic; this one exists only in this layer.
    && SECRET_KEY=collectstatic-only-not-a-secret DATABASE_URL=sqlite:////tmp/build.sqlite3 \
       python manage.py collectstatic --noinput -v 0 \
    && rm -f /tmp/build.sqlite3 \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin computemesh \
    && mkdir -p /app/var/media \
    && chown -R computemesh /app/var

USER computemesh
EXPOSE 8000
CMD ["daphne", "--proxy-headers", "-b", "0.0.0.0", "-p", "8000", "webapp.asgi:application"]
