"""The agent protocol's wire format (docs/agent-protocol.md): the messages sent to agents,
and what agents send, validated and coerced in one place, with the sequence checks that
apply each numbered message exactly once. No workflow: the lifecycle (services/execution.py)
and the ingest act on what this returns.
"""

import re
import uuid
from datetime import UTC, datetime
from typing import Any, TypeGuard

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from ..errors import MarketError
from ..models import Assignment, Node


# --- messages to agents ----------------------------------------------------------
def node_group(node_id: int) -> str:
    return f"agent.node.{node_id}"


def send_to_node(node_id: int, message: dict) -> None:
    """Push a message to a node's agent once the current transaction commits."""
    def push():
        layer = get_channel_layer()
        if layer is not None:
            async_to_sync(layer.group_send)(node_group(node_id),
                                            {"type": "agent.forward", "message": message})
    transaction.on_commit(push)


def agent_message(type_: str, **fields) -> dict:
    """A message to an agent: its type, a fresh id, its fields."""
    return {"type": type_, "id": uuid.uuid4().hex, **fields}


def pause_message(assignment: Assignment) -> dict:
    """Budget safety: checkpoint at the next step and stop (services/budget.py)."""
    return agent_message("assignment.pause", assignment=assignment.pk,
                         reason="the job's budget is spent: checkpoint and stop")


def cancel_message(assignment_id: int, reason: str) -> dict:
    """Stop running this assignment, and why (at most 200 characters)."""
    return agent_message("assignment.cancel", assignment=assignment_id, reason=reason[:200])


class AgentRefused(MarketError):
    """This agent may not work here (the socket is closed with the message)."""


class AgentMessageError(MarketError):
    pass


DATA_TYPES = {"assignment.accepted", "assignment.rejected", "progress", "log", "checkpoint",
              "assignment.finished"}

# --- what agents send, checked in one place ------------------------------------------
# Every field of a data message is validated and coerced here, before any handler runs, and
# handlers read only the cleaned copy. A handler that met a value it did not expect used to
# raise, and the whole ingest batch, other agents' messages included, was refused
# (tests/test_agent_ingest_isolation.py). Bounds are the columns': ids are bigint, steps,
# epochs and sequence numbers PostgreSQL integers.
MAX_ID = 2**63 - 1
MAX_COUNT = 2**31 - 1
MAX_PROGRESS_ITEMS, MAX_LOG_LINES, MAX_LINE_CHARS, MAX_DIGESTS = 1000, 500, 2000, 256
MAX_RANK = 65535
FINISHED_STATUSES = {"succeeded", "failed", "paused"}


def _invalid(field: str, expected: str) -> AgentMessageError:
    return AgentMessageError(f"{field}: expected {expected}", code="invalid")


def _integer(value: Any, field: str, *, low: int = 0, high: int = MAX_COUNT,
             optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _invalid(field, f"an integer in {low}..{high}" + (" or null" if optional else ""))
    return value


# Measurements (losses, rates, traffic, clocks) that are not usable numbers are stored as
# unknown rather than refused: a diverged loss is NaN on an honest node, and refusing the
# message would stall the assignment's whole stream behind it.
def _byte_count(value: Any) -> int | None:
    """A traffic counter: a whole number of bytes (an int or an integral float), else None."""
    if (isinstance(value, bool) or not isinstance(value, int | float) or value != value
            or not 0 <= value <= MAX_ID or value != int(value)):
        return None
    return int(value)


def _number(value: Any) -> float | None:
    """A finite number, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    out = float(value)
    return out if out == out and abs(out) != float("inf") else None


def _text(value: Any, field: str, *, limit: int, optional: bool = True) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise _invalid(field, "a string")
    return value[:limit]


def _sha256(value: Any, field: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not (isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)):
        raise _invalid(field, "a SHA-256 as 64 lowercase hex digits")
    return value


def _list(value: Any, field: str, *, limit: int) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _invalid(field, "a list")
    return value[:limit]


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
LOG_STREAMS = ("stdout", "stderr")


def _log_line(item: Any, field: str) -> dict:
    """One output line: {seq, t, rank, stream, text} (rank null: the launcher's own), or a
    bare string from an agent older than ranked logs. Control characters are removed here,
    so no page or terminal ever receives them; the rank is checked against the assignment
    by the ingest, which knows it."""
    if isinstance(item, str):
        item = {"text": item}
    if not isinstance(item, dict):
        raise _invalid(field, "an object with 'text'")
    stream = item.get("stream", "stdout")
    if stream not in LOG_STREAMS:
        raise _invalid(f"{field}.stream", "stdout or stderr")
    text = _text(item.get("text"), f"{field}.text", limit=MAX_LINE_CHARS, optional=False) or ""
    return {"rank": _integer(item.get("rank"), f"{field}.rank", high=MAX_RANK, optional=True),
            "stream": stream, "text": _CONTROL.sub("", text)}


def _progress_item(item: Any, n: int) -> dict:
    field = f"items[{n}]"
    if not isinstance(item, dict):
        raise _invalid(field, "an object")
    return {"step": _integer(item.get("step"), f"{field}.step"),
            "total_steps": _integer(item.get("total_steps"), f"{field}.total_steps"),
            "epoch": _integer(item.get("epoch", 0), f"{field}.epoch"),
            "loss": _number(item.get("loss")),
            "samples_per_sec": _number(item.get("samples_per_sec")),
            "comm_bytes": _byte_count(item.get("comm_bytes")),
            "comm_bytes_ddp": _byte_count(item.get("comm_bytes_ddp")),
            "at": _number(item.get("at"))}


def _rdzv_refused(host: str, port: int | None, seen: Any) -> str | None:
    """Why rank 0's rendezvous address is refused, or None. The job's other nodes are sent
    there, so it must be this node's own (where its socket comes from, or what its agent
    advertised: `seen`, set by the agent socket, never by the agent) and a port in the
    configured range, not a third party's address the job would then connect to."""
    low, high = settings.AGENT_RDZV_PORT_MIN, settings.AGENT_RDZV_PORT_MAX
    if port is not None and not low <= port <= high:
        return f"rendezvous port {port} is outside {low}..{high}"
    # (Nothing known only where no socket address exists, as in in-process test sockets:
    # daphne and uvicorn always give one.)
    if host and isinstance(seen, list) and seen and host not in seen:
        return (f"rendezvous host {host[:64]!r} is not this node's own address "
                f"({', '.join(map(str, seen[:4]))})")
    return None


def _clean_body(kind: str, m: dict) -> dict:
    """The fields of a `kind` message that its handler reads, validated; the rest dropped."""
    if kind == "progress":
        return {"items": [_progress_item(item, n) for n, item in
                          enumerate(_list(m.get("items"), "items", limit=MAX_PROGRESS_ITEMS))]}
    if kind == "log":
        lines = _list(m.get("lines"), "lines", limit=MAX_LOG_LINES)
        return {"lines": [_log_line(x, f"lines[{n}]") for n, x in enumerate(lines)]}
    if kind == "checkpoint":
        return {"step": _integer(m.get("step"), "step"), "sha256": _sha256(m.get("sha256"), "sha256"),
                "bytes": _byte_count(m.get("bytes"))}
    if kind == "assignment.accepted":
        rdzv = m.get("rdzv")
        if rdzv is None:
            return {"rdzv": {}}
        if not isinstance(rdzv, dict):
            raise _invalid("rdzv", "an object with 'host' and 'port'")
        host = _text(rdzv.get("host"), "rdzv.host", limit=255) or ""
        port = _integer(rdzv.get("port"), "rdzv.port", low=1, high=65535, optional=True)
        return {"rdzv": {"host": host, "port": port},
                "rdzv_refused": _rdzv_refused(host, port, m.get("seen_hosts"))}
    if kind == "assignment.rejected":
        return {"reason": _text(m.get("reason"), "reason", limit=500)}
    status = m.get("status")
    if status not in FINISHED_STATUSES:
        raise _invalid("status", " or ".join(sorted(FINISHED_STATUSES)))
    return {"status": status, "error": _text(m.get("error"), "error", limit=1500),
            "error_kind": _text(m.get("error_kind"), "error_kind", limit=32),
            "metric": _text(m.get("metric"), "metric", limit=32),
            "value": _number(m.get("value")),
            "step": _integer(m.get("step"), "step", optional=True),
            "total_steps": _integer(m.get("total_steps"), "total_steps", optional=True),
            "artifact_sha256": _sha256(m.get("artifact_sha256"), "artifact_sha256", optional=True),
            "param_digests": [_text(d, f"param_digests[{n}]", limit=64, optional=False) for n, d in
                              enumerate(_list(m.get("param_digests"), "param_digests", limit=MAX_DIGESTS))],
            "comm_bytes": _byte_count(m.get("comm_bytes")),
            "comm_bytes_ddp": _byte_count(m.get("comm_bytes_ddp")),
            "data_deleted": m.get("data_deleted") is True}


def assignment_ids(values: list) -> set[int]:
    """The assignment ids in an agent's list; anything that cannot be one is left out."""
    ids = {x if isinstance(x, int) else int(x) for x in values
           if (isinstance(x, int) and not isinstance(x, bool)) or (isinstance(x, str) and x.isdigit())}
    return {x for x in ids if 1 <= x <= MAX_ID}


def parse_data(message: dict) -> tuple[str, int, int, dict]:
    """A data message's type, assignment id and seq, and its cleaned copy (what handlers
    read); raises AgentMessageError with the reason otherwise."""
    kind = message.get("type")
    if kind not in DATA_TYPES:
        raise AgentMessageError(f"unknown message type {str(kind)[:40]!r}", code="unknown_type")
    assignment, seq = message.get("assignment"), message.get("seq")
    if not (_is_int(assignment) and _is_int(seq)):
        raise AgentMessageError("data messages need integer 'assignment' and 'seq'", code="malformed")
    if not (1 <= assignment <= MAX_ID and 1 <= seq <= MAX_COUNT):
        raise AgentMessageError(f"'assignment' must lie in 1..{MAX_ID} and 'seq' in 1..{MAX_COUNT}",
                                code="malformed")
    clean = {"type": kind, "id": message.get("id"), "assignment": assignment, "seq": seq,
             **_clean_body(kind, message)}
    return kind, assignment, seq, clean


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def check_seq(assignment: Assignment | None, node: Node, seq: int) -> TypeGuard[Assignment]:
    """True to apply, False for a duplicate (acked again, not applied); raises otherwise
    (so True also says the assignment exists and is this node's)."""
    if assignment is None or assignment.node_id != node.pk:
        raise AgentMessageError("that assignment is not yours", code="not_yours")
    if seq <= assignment.last_seq:
        return False
    if seq != assignment.last_seq + 1:
        raise AgentMessageError(f"out of order: expected seq {assignment.last_seq + 1}",
                                code="out_of_order")
    return True


def parse_batch(items: list[tuple[Node, dict]]) -> tuple[list[AgentMessageError | None], list[tuple]]:
    """A batch's results (None until something is refused) and its parsable messages as
    (index, node, cleaned message, kind, assignment id, seq); the others are refused in results."""
    results: list[AgentMessageError | None] = [None] * len(items)
    parsed = []
    for i, (node, message) in enumerate(items):
        try:
            kind, assignment_id, seq, clean = parse_data(message)
        except AgentMessageError as exc:
            results[i] = exc
            continue
        parsed.append((i, node, clean, kind, assignment_id, seq))
    return results, parsed


def applicable(parsed: list[tuple], rows: dict, results: list):
    """The parsed messages to apply, in order, as (index, message, kind, assignment row, seq):
    resends skipped (acked again), refusals recorded in `results`. Lazy, so each check sees
    what the caller applied before it."""
    for i, node, message, kind, assignment_id, seq in parsed:
        a = rows.get(assignment_id)
        try:
            if check_seq(a, node, seq):
                yield i, message, kind, a, seq
        except AgentMessageError as exc:
            results[i] = exc


def _ts(value: Any) -> datetime:
    try:
        return datetime.fromtimestamp(float(value), tz=UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return timezone.now()


def progress_items(message: dict) -> list[dict]:
    """A progress message's samples as MetricPoint values (less job, assignment and seq):
    at most 1,000, bad numbers dropped to their defaults."""
    return [{"step": loose_int(item.get("step")), "total_steps": loose_int(item.get("total_steps")),
             "epoch": loose_int(item.get("epoch")), "loss": loose_float(item.get("loss")),
             "samples_per_sec": loose_float(item.get("samples_per_sec")),
             "comm_bytes": loose_int(item.get("comm_bytes"), None),
             "comm_bytes_ddp": loose_int(item.get("comm_bytes_ddp"), None), "at": _ts(item.get("at"))}
            for item in [i for i in (message.get("items") or []) if isinstance(i, dict)][:1000]]


def loose_int(value: Any, default: int | None = 0) -> int | None:
    try:
        out = int(value)
    except (TypeError, ValueError, OverflowError):
        return default
    return out if 0 <= out < 2**62 else default


def loose_float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if out == out and abs(out) != float("inf") else None
