"""The verifier's torch half: replaying and loading what providers uploaded.

Plain inputs in (file paths, the job's spec, the segments the platform chose), plain
numbers and findings out. No Django and nothing of the platform: the `verify` Celery task
(workers/tasks_verify.py) hands these functions to marketplace/services/verification.py,
which decides what to check and what an outcome means. Only the verify worker, built with
the `verify` extra, has torch; the web process and the other workers never import this.
"""

from .check import REASONS, check_attempt, check_determinism, checkpoint_problem
from .sandboxed import check_attempt_sandboxed, check_determinism_sandboxed, checkpoint_problem_sandboxed

__all__ = ["REASONS", "check_attempt", "check_attempt_sandboxed", "check_determinism",
           "check_determinism_sandboxed", "checkpoint_problem", "checkpoint_problem_sandboxed"]
