"""Reading the platform's logs in tests: every full-stack, chaos and browser test that starts
platform processes (tests/stack.py's Stack, browser_support.asgi_server) fails at teardown
when a log holds a traceback, an ERROR or CRITICAL record, or an `internal` answer to an
agent that the test did not allow. The platform catches exceptions to stay up (the agent
socket answers `internal`, tasks log and retry), so a test that does not read the logs
passes over a bug that only they show."""

import re
from pathlib import Path

import pytest

# A log entry that fails the test unless allowed: a traceback, a record at ERROR or CRITICAL
# (Django's "… ERROR name: …", Celery's "[…: ERROR/MainProcess] …"), or an agent told that
# its messages were not applied because the platform failed ("internal": the server logs
# the cause; the agent logs "platform says: not applied").
PROBLEM = re.compile(r"Traceback \(most recent call last\)|\b(ERROR|CRITICAL)\b|"
                     r"platform says: not applied|\"code\": \"internal\"")
_TRACEBACK_BODY = ("  ", "\t", "Traceback", "During handling", "The above exception")


def log_entries(lines: list[str]):
    """(line number, text) of each problem in a log; a line followed by a traceback, or a
    traceback, is one entry up to and including its exception's line, chained exceptions
    ("During handling of the above exception …") included."""
    i = 0
    while i < len(lines):
        if not PROBLEM.search(lines[i]):
            i += 1
            continue
        j = i + 1
        if "Traceback (most recent call last)" in lines[i] or (
                j < len(lines) and lines[j].startswith("Traceback")):
            while True:
                while j < len(lines) and (lines[j].startswith(_TRACEBACK_BODY) or not lines[j].strip()):
                    j += 1
                j = min(j + 1, len(lines))  # the exception's own line
                k = j
                while k < len(lines) and not lines[k].strip():
                    k += 1
                if not (k < len(lines) and lines[k].startswith(_TRACEBACK_BODY[3:])):
                    break
                j = k  # an exception chained to it: the same entry
        yield i + 1, "\n".join(lines[i:j])
        i = j


class LogFile:
    """One platform process's log outside a Stack (the browser tests' daphne)."""

    def __init__(self, path: Path):
        self.path = path

    def log_problems(self) -> list[str]:
        lines = self.path.read_text(errors="replace").splitlines() if self.path.exists() else []
        return [f"{self.path.name}:{n}: {shorten(entry)}" for n, entry in log_entries(lines)]


def shorten(entry: str) -> str:
    return entry if len(entry) < 2000 else f"{entry[:500]}\n  …\n{entry[-1200:]}"


_watched: list = []


def watch(logs) -> None:
    """Have the current test read `logs` (anything with `log_problems()`) at its teardown."""
    _watched.append(logs)


@pytest.fixture(autouse=True)
def platform_logs_clean():
    """Fails the test at teardown on an unexpected problem in the logs of any platform
    process it started (after their own teardown: this fixture is set up first)."""
    _watched.clear()
    yield
    watched, problems = list(_watched), []
    _watched.clear()
    for logs in watched:
        problems += logs.log_problems()
    if problems:
        pytest.fail(f"{len(problems)} unexpected problem(s) in the platform's logs "
                    f"(a Stack's test may allow an injected fault with Stack.allow):\n\n"
                    + "\n\n".join(problems[:20]), pytrace=False)
