"""The Celery app. Queues are routed by purpose; the chain queue has a single sender."""

import os

from celery import Celery
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")

app = Celery("computemesh")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = [Queue("default"), Queue("dispatch"), Queue("chain"), Queue("verify")]
app.conf.task_routes = {
    "workers.tasks_dispatch.*": {"queue": "dispatch"},
    "workers.tasks_chain.*": {"queue": "chain"},
    "workers.tasks_verify.*": {"queue": "verify"},
}
app.conf.imports = ("workers.tasks", "workers.tasks_dispatch", "workers.tasks_chain",
                    "workers.tasks_verify")
app.conf.beat_schedule = {
    "heartbeat-watchdog": {"task": "workers.tasks.heartbeat_watchdog", "schedule": 5.0},
    "rematch-waiting": {"task": "workers.tasks.rematch_waiting", "schedule": 15.0},
    "chain-sync": {"task": "workers.tasks_chain.chain_sync", "schedule": 3.0},
    "verify-stale": {"task": "workers.tasks_verify.verify_stale", "schedule": 60.0},
    "budget-watch": {"task": "workers.tasks.budget_watch",
                     "schedule": float(os.environ.get("BUDGET_CHECK_INTERVAL_S", "2"))},
    "reputations": {"task": "workers.tasks.reputations_update",
                    "schedule": float(os.environ.get("REPUTATION_INTERVAL_S", "600"))},
    "settle-pending": {"task": "workers.tasks_chain.settle_pending",
                       "schedule": float(os.environ.get("SETTLEMENT_INTERVAL_S", "10"))},
}
