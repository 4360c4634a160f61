"""The agent ingest's fast path: batches made only of progress messages for running
assignments, applied on the server's event loop over an asyncio psycopg connection.

Progress is nearly all the traffic of the agent sockets. Written through the ORM in a
worker thread, each batch paid for building model instances and compiling queries, and its
thread queued for the interpreter lock behind the event loop after every round trip to
PostgreSQL (measured: half of a batch's time at 1,000 messages a second). Here a batch is
four statements with fixed texts (prepared by psycopg after a few uses) and array
parameters, awaited without a thread. The semantics are those of
`agent_ingest.agent_data_batch`: the same sequence checks, rows locked in id order, points
numbered per job, persisted before anything is broadcast. Anything else, and progress for
an assignment that is not running yet (its first point starts it), is declined and goes
through `agent_data_batch`.
"""

from dataclasses import dataclass
from typing import Any

import psycopg
from django.db import connections

from ..models import Assignment, Job, MetricPoint
from ..selectors.live import point_values
from . import live
from .agent_protocol import AgentMessageError, applicable, parse_batch, progress_items

A = Assignment.Status

_A, _J, _M = Assignment._meta.db_table, Job._meta.db_table, MetricPoint._meta.db_table
LOCK_ASSIGNMENTS = (f"SELECT id, node_id, last_seq, status, job_id FROM {_A} "
                    f"WHERE id = ANY(%s::bigint[]) ORDER BY id FOR UPDATE")
LOCK_JOBS = f"SELECT id, metric_seq FROM {_J} WHERE id = ANY(%s::bigint[]) ORDER BY id FOR UPDATE"
POINT_COLUMNS = ("job_id", "assignment_id", "seq", "step", "total_steps", "epoch", "loss",
                 "samples_per_sec", "comm_bytes", "comm_bytes_ddp", "at")
INSERT_POINTS = (f"INSERT INTO {_M} ({', '.join(POINT_COLUMNS)}) SELECT * FROM unnest("
                 "%s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[], "
                 "%s::float8[], %s::float8[], %s::bigint[], %s::bigint[], %s::timestamptz[])")
# A sample that leaves a number out keeps the job's last known value, as the ORM path does.
UPDATE_JOBS = (f"UPDATE {_J} AS j SET metric_seq = v.metric_seq, current_step = v.step, "
               "total_steps = v.total_steps, last_loss = COALESCE(v.loss, j.last_loss), "
               "samples_per_sec = COALESCE(v.sps, j.samples_per_sec), "
               "comm_bytes = COALESCE(v.cb, j.comm_bytes), "
               "comm_bytes_ddp = COALESCE(v.cbd, j.comm_bytes_ddp), "
               "updated_at = now() FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[], "
               "%s::float8[], %s::float8[], %s::bigint[], %s::bigint[]) "
               "AS v(id, metric_seq, step, total_steps, loss, sps, cb, cbd) WHERE j.id = v.id")
UPDATE_SEQS = (f"UPDATE {_A} AS a SET last_seq = v.last_seq FROM unnest(%s::bigint[], %s::bigint[]) "
               "AS v(id, last_seq) WHERE a.id = v.id")


@dataclass
class _Row:
    pk: int
    node_id: int
    last_seq: int
    status: str
    job_id: int

    def __post_init__(self):
        self.applied = self.last_seq  # as locked; last_seq moves as messages apply


class ProgressWriter:
    """One asyncio connection per server process, opened on first use and again after a
    failure. `apply` answers None when the batch is not for the fast path (nothing written);
    it raises psycopg errors as they come (nothing written either: one transaction)."""

    def __init__(self):
        self.conn: psycopg.AsyncConnection | None = None

    @staticmethod
    def available() -> bool:
        return connections["default"].vendor == "postgresql"

    async def _connection(self) -> psycopg.AsyncConnection:
        if self.conn is None or self.conn.closed:
            self.conn = await psycopg.AsyncConnection.connect(**_params(), autocommit=True)
        return self.conn

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()
            self.conn = None

    async def apply(self, items: list[tuple[Any, dict]], outbox: list,
                    snapshots: set) -> list[AgentMessageError | None] | None:
        """`items` are (node, message) in arrival order; results as agent_data_batch's."""
        if any(message.get("type") != "progress" for _, message in items):
            return None
        results, parsed = parse_batch(items)
        if not parsed:
            return results
        conn = await self._connection()
        try:
            async with conn.transaction():
                cur = conn.cursor()
                await cur.execute(LOCK_ASSIGNMENTS, ([p[4] for p in parsed],))
                rows = {r[0]: _Row(*r) for r in await cur.fetchall()}
                taken = []
                for _, message, _, a, seq in applicable(parsed, rows, results):
                    if a.status != A.RUNNING and a.status in Assignment.ACTIVE:
                        raise _Declined  # its first point starts it: the ORM path does that
                    a.last_seq = seq
                    if a.status == A.RUNNING:
                        taken.append((a, message))
                points = await self._store(cur, taken) if taken else {}
                moved = [a for a in rows.values() if a.last_seq != a.applied]
                if moved:
                    await cur.execute(UPDATE_SEQS, ([a.pk for a in moved], [a.last_seq for a in moved]))
        except _Declined:
            return None
        for job_id, ps in points.items():
            outbox.append((live.job_group(job_id),
                           {"type": "job.update", "message": {"type": "metrics", "points": ps}}))
            snapshots.add(job_id)
        return results

    async def _store(self, cur, taken: list[tuple[_Row, dict]]) -> dict[int, list[dict]]:
        """Number and insert the points, update their jobs; returns each job's points as
        the browser gets them."""
        await cur.execute(LOCK_JOBS, (sorted({a.job_id for a, _ in taken}),))
        seqs = dict(await cur.fetchall())
        columns: list[list] = [[] for _ in POINT_COLUMNS]
        points: dict[int, list[dict]] = {}
        last: dict[int, dict] = {}
        for a, message in taken:
            for item in progress_items(message):
                seqs[a.job_id] += 1
                values = (a.job_id, a.pk, seqs[a.job_id], item["step"], item["total_steps"], item["epoch"],
                          item["loss"], item["samples_per_sec"], item["comm_bytes"], item["comm_bytes_ddp"],
                          item["at"])
                for column, value in zip(columns, values, strict=True):
                    column.append(value)
                item["seq"] = seqs[a.job_id]
                points.setdefault(a.job_id, []).append(point_values(item))
                last[a.job_id] = item
        if not points:
            return {}
        await cur.execute(INSERT_POINTS, columns)
        ids = list(last)
        fields = ("step", "total_steps", "loss", "samples_per_sec", "comm_bytes", "comm_bytes_ddp")
        await cur.execute(UPDATE_JOBS, (ids, [seqs[j] for j in ids],
                                        *([last[j][f] for j in ids] for f in fields)))
        return points


class _Declined(Exception):
    """The batch needs the ORM path; the transaction is rolled back."""


def _params() -> dict:
    """Connection arguments from Django's settings for the default database (the test
    database under the test runner), less Django's own options."""
    settings = connections["default"].settings_dict
    params = {"dbname": settings["NAME"], "user": settings["USER"] or None,
              "password": settings["PASSWORD"] or None, "host": settings["HOST"] or None,
              "port": settings["PORT"] or None}
    django_only = {"pool", "server_side_binding", "isolation_level", "assume_role", "cursor_factory"}
    params.update({k: v for k, v in settings.get("OPTIONS", {}).items() if k not in django_only})
    params.setdefault("application_name", "computemesh-ingest")  # found in pg_stat_activity
    return {k: v for k, v in params.items() if v is not None}
