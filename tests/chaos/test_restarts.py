"""How the chaos suite judges a Celery worker that exited on its own (harness.supervise):
only a known upstream defect, named by the line the worker logged, after the fault that
causes it, at most once per worker and fault."""

from .harness import Exit, Injection, defect_of
from .test_chaos import unexplained_exits

CELERY_570 = ("[2026-12-03 11:41:02,118: CRITICAL/MainProcess] Unrecoverable error: "
              "AttributeError(\"'NoneType' object has no attribute 'hostname'\")")


def exit_(process: str, at: float, log: list[str]) -> Exit:
    return Exit(process, at, 1, log[0] if log else "(none logged)", defect_of(log))


def test_the_celery_570_exit_is_known_by_its_log_line():
    assert defect_of(["[…: INFO/MainProcess] Connected to redis://127.0.0.1:6399/0", CELERY_570]) == \
        "celery-5.7.0-hostname"
    assert defect_of(["[…: CRITICAL/MainProcess] Unrecoverable error: KeyError('x')"]) is None


def test_once_per_worker_after_each_redis_restart_is_explained():
    restarts = [Injection("redis_restart", 100.0, "redis"), Injection("redis_restart", 200.0, "redis")]
    exits = [exit_("chain-1", 101.0, [CELERY_570]), exit_("celery", 102.0, [CELERY_570]),
             exit_("chain-2", 201.0, [CELERY_570])]
    assert unexplained_exits(exits, restarts) == []


def test_an_unknown_exit_a_second_exit_per_fault_or_one_before_the_fault_is_not():
    restart = [Injection("redis_restart", 100.0, "redis")]
    unknown = exit_("celery", 101.0, ["[…: CRITICAL/MainProcess] Unrecoverable error: KeyError('x')"])
    (found,) = unexplained_exits([unknown], restart)
    assert found.startswith("celery exited with 1 for no known reason") and "KeyError" in found
    twice = [exit_("chain-1", 101.0, [CELERY_570]), exit_("chain-2", 150.0, [CELERY_570])]
    assert unexplained_exits(twice, restart) == ["chain-2 exited with celery-5.7.0-hostname 2 time(s) "
                                                 "after 1 redis_restart(s)"]
    assert len(unexplained_exits([exit_("chain-1", 99.0, [CELERY_570])], restart)) == 1
