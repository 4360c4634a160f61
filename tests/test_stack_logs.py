"""The full-stack harness reads its processes' logs (tests/stack.py): a traceback, an ERROR
or CRITICAL record, or an `internal` answer to an agent fails the test unless allowed."""

import sys

from .platform_logs import log_entries
from .stack import Stack

DJANGO_ERROR = """2026-12-06 18:00:01,001 INFO marketplace: fine
2026-12-06 18:00:02,002 ERROR marketplace.consumers.agent: applying 3 agent messages failed
Traceback (most recent call last):
  File "/x.py", line 1, in f
    int("abc")
ValueError: invalid literal for int() with base 10: 'abc'
2026-12-06 18:00:03,003 INFO marketplace: fine again"""


def test_an_error_record_and_its_traceback_are_one_entry():
    entries = list(log_entries(DJANGO_ERROR.splitlines()))
    assert [n for n, _ in entries] == [2]
    assert entries[0][1].endswith("ValueError: invalid literal for int() with base 10: 'abc'")


def test_each_kind_of_problem_is_found():
    lines = ["[2026-12-06 18:00:00,000: CRITICAL/MainProcess] Unrecoverable error: AttributeError('x')",
             "! platform says: not applied; resend later",
             '{"type": "error", "code": "internal", "message": "m"}',
             "[2026-12-06 18:00:00,000: WARNING/MainProcess] a warning is not a problem",
             "Traceback (most recent call last):", '  File "a.py", line 1', "KeyError: 'x'"]
    assert [n for n, _ in log_entries(lines)] == [1, 2, 3, 5]


def test_a_chained_traceback_is_one_entry():
    lines = ["[t: ERROR/MainProcess] consumer: lost the broker",
             "Traceback (most recent call last):", '  File "a.py", line 1',
             "redis.exceptions.ConnectionError: Error 111 connecting to 127.0.0.1:6399.", "",
             "During handling of the above exception, another exception occurred:", "",
             "Traceback (most recent call last):", '  File "b.py", line 2', "IndexError: pop from empty list",
             "[t: INFO/MainProcess] reconnected"]
    ((n, entry),) = log_entries(lines)
    assert n == 1 and "127.0.0.1:6399" in entry and entry.endswith("IndexError: pop from empty list")


def test_a_process_that_crashes_is_reported_unless_the_test_allows_it(tmp_path):
    stack = Stack(tmp_path)
    proc = stack._spawn("crasher", [sys.executable, "-c", "raise ValueError('injected on purpose')"])
    assert proc.wait(timeout=60) == 1
    (problem,) = stack.log_problems()
    assert problem.startswith("crasher.log:1: Traceback") and "ValueError: injected on purpose" in problem
    stack.allow(r"ValueError: injected on purpose", why="this test's own crash")
    assert stack.log_problems() == []
