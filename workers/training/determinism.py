"""Is a task deterministic under the runtime's seeding? (issue 16: checked on the verifier
before a custom task's work is verified by step replay.)

The same few steps are replayed twice from the same state with the job's own replay
(replay.py): a task whose steps are a function of their inputs gives the same bits twice;
one that draws from the clock, an unseeded generator or a racing reduction does not, and is
to be verified by held-out evaluation only (a replay could not tell its honest work from a
cheat's). Both replays run in this process with the same thread count, so differences come
from the task, not from the machine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from . import replay

DEFAULT_STEPS = 3


@dataclass(frozen=True)
class Determinism:
    deterministic: bool
    steps: int
    rel_l2: float  # between the two replays' states (0.0 when deterministic)
    seconds: float  # what the check cost (both replays)

    def as_dict(self) -> dict:
        return {"deterministic": self.deterministic, "steps": self.steps,
                "rel_l2": self.rel_l2, "seconds": round(self.seconds, 3)}


def check(replayer: replay.Replayer, start: dict | None = None, *,
          steps: int = DEFAULT_STEPS) -> Determinism:
    """Replay `steps` steps from `start` (default: the job's initial state) twice and compare."""
    began = time.perf_counter()
    start = start if start is not None else replayer.initial_state()
    first = int(start["step"])
    to_step = min(first + max(1, steps), replayer.plan.total_steps)
    a = replayer.replay(start, to_step=to_step)
    b = replayer.replay(start, to_step=to_step)
    same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return Determinism(same, to_step - first, 0.0 if same else replay.rel_l2(a, b),
                       time.perf_counter() - began)
