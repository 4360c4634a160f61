"""Logs an operator can search: with LOG_FORMAT=json every record is one JSON object with the
request id and the job id of the work it belongs to (settings.LOGGING).

The ids live in context variables: the web middleware (webapp/ops.py) binds the request id
(the balancer's X-Request-ID, or a fresh one) and the job of a job URL; Celery binds the
task id and the task's `job_id` argument for the task's run. A record may also name its job
itself (`log.info(..., extra={"job_id": job.pk})`). A leaf: the standard library and
Celery's signals only.
"""

import json
import logging
import traceback
from contextvars import ContextVar
from datetime import UTC, datetime
from functools import cache

from celery import signals

from .metrics import task_job_id

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
job_id_var: ContextVar[int | None] = ContextVar("job_id", default=None)
task_id_var: ContextVar[str | None] = ContextVar("task_id", default=None)
_VARS = {"request_id": request_id_var, "job_id": job_id_var, "task_id": task_id_var}

# The attributes every LogRecord has: anything else on a record came from `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class ContextFilter(logging.Filter):
    """Puts the bound ids on every record (also for the plain format: `%(request_id)s`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _VARS.items():
            if getattr(record, name, None) is None:
                setattr(record, name, var.get())
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the ids, the
    record's extras and the exception's traceback."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
               "level": record.levelname, "logger": record.name, "message": record.getMessage(),
               "process": record.process}
        for name, var in _VARS.items():
            value = getattr(record, name, None)
            if value is None:
                value = var.get()
            if value is not None:
                out[name] = value
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in _VARS and key not in out:  # an id unbound: left out
                out[key] = value if isinstance(value, str | int | float | bool | type(None)) else repr(value)
        if record.exc_info:
            out["exception"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return json.dumps(out, ensure_ascii=False)


_tokens: dict[str, tuple] = {}


def _task_prerun(task_id=None, task=None, args=None, kwargs=None, **_):
    _tokens[task_id] = (task_id_var.set(task_id), job_id_var.set(task_job_id(task, args, kwargs)))


def _task_postrun(task_id=None, **_):
    tokens = _tokens.pop(task_id, None)
    if tokens is not None:
        task_id_var.reset(tokens[0])
        job_id_var.reset(tokens[1])


@cache
def celery_signals_connected() -> bool:
    """Bind each task's ids for its run (idempotent; AppConfig.ready calls it)."""
    signals.task_prerun.connect(_task_prerun, weak=False)
    signals.task_postrun.connect(_task_postrun, weak=False)
    return True
