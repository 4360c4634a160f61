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
# The beat schedule is settings.CELERY_BEAT_SCHEDULE (its intervals are settings too).
