"""Test-only misbehaviour, so that tests exercise real dishonesty through the real pipeline.

    COMPUTEMESH_FAULTS="skip_steps=0.1,inflate_metric=0.05"

- skip_steps=F: skip the optimizer update on a fraction F of the steps, evenly spread
  (F=0.1: every 10th step), while still counting and reporting them. Every rank decides
  by step number alone, so the ranks' collectives stay in step.
- inflate_metric=X: report a better held-out metric than achieved: accuracy + X (at most
  1.0), or a MAPE X times smaller (X=0.05: 5 % lower).
- withhold_checkpoints: the agent uploads and commits none of the job's checkpoints (the
  final model still goes up), so that no step of the work can be replayed.
- corrupt_gradients: this node's ranks send the negation of their gradients into DDP's
  all-reduce (a corrupting peer); every rank's parameters stay equal, so only a replay
  shows it; the checkpoints cannot tell which node did it, the ranks' gradient
  commitments (commitments.py: the hook commits what the rank sends) do.
- pickle_peer: every rank but global rank 0 sends, in place of its parameter digest, the
  32 bytes of a pickle that runs `touch pwned` in the working directory of whoever
  unpickles it (the cross-provider attack of issue 13): a peer can only ever fill its
  fixed-size slot, and rank 0 must never unpickle it.
- vanish: reserved for the chaos suite (an agent that disappears mid-job); parsed here
  so that one variable names every fault, implemented by the chaos work.

The agent announces its faults in `hello`; the platform refuses such an agent unless
ALLOW_AGENT_FAULTS (the test settings only), and the agent's CLI refuses to start
with faults unless given --allow-test-faults. No Django here: this runs on providers.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

ENV = "COMPUTEMESH_FAULTS"
KNOWN = ("skip_steps", "inflate_metric", "withhold_checkpoints", "corrupt_gradients", "pickle_peer",
         "vanish")
# Protocol 0 pickle calling os.system("touch pwned"), padded with newlines (ignored after
# STOP) to exactly the 32 bytes of a SHA-256 digest: what a hostile rank can put in its slot.
PICKLE_PAYLOAD = b"cos\nsystem\n(S'touch pwned'\ntR.\n\n"


class FaultSpecError(ValueError):
    """COMPUTEMESH_FAULTS cannot be parsed; the message says why."""


@dataclass(frozen=True)
class Faults:
    skip_steps: float = 0.0
    inflate_metric: float = 0.0
    withhold_checkpoints: float = 0.0  # acted on by the agent (run_assignment.py)
    corrupt_gradients: float = 0.0
    pickle_peer: float = 0.0
    vanish: float = 0.0  # the chaos suite's; not acted on here

    @property
    def any(self) -> bool:
        return any(asdict(self).values())

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v}

    def skip(self, step: int) -> bool:
        """Whether the update of 0-based step `step` is skipped: F of the steps, evenly."""
        f = self.skip_steps
        return f > 0 and math.floor((step + 1) * f) > math.floor(step * f)

    def digest_payload(self, rank: int, digest: bytes) -> bytes:
        """What this rank sends as its parameter digest (test-only: a hostile peer's pickle)."""
        return PICKLE_PAYLOAD if self.pickle_peer and rank != 0 else digest

    def report(self, metric: str, value: float) -> float:
        if not self.inflate_metric:
            return value
        if metric == "mape":
            return value * (1 - self.inflate_metric)
        return min(1.0, value + self.inflate_metric)


def parse(text: str | None) -> Faults:
    if not text or not text.strip():
        return Faults()
    values: dict[str, float] = {}
    for item in text.split(","):
        name, sep, raw = item.strip().partition("=")
        if name not in KNOWN:
            raise FaultSpecError(f"unknown fault {name!r}; known: {', '.join(KNOWN)}")
        try:
            value = float(raw) if sep else 1.0
        except ValueError:
            raise FaultSpecError(f"{name} needs a number, not {raw!r}") from None
        if not 0 <= value <= 1:
            raise FaultSpecError(f"{name} must be between 0 and 1")
        values[name] = value
    return Faults(**values)


def from_env() -> Faults:
    return parse(os.environ.get(ENV))
