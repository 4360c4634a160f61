"""Per-rank gradient commitments of a DDP job across nodes: who contributed what (issue 12).

A checkpoint holds the parameters after every rank's gradients were averaged, so a replay
that does not reproduce it cannot tell which node's share was wrong. Here each rank also
says, at every step, what its OWN gradient was: a DDP comm hook projects each parameter's
local gradient (before the reduction) onto K fixed pseudo-random ±1 vectors, and each rank
projects the parameters it trains from onto the same vectors. That is 2·K float64 numbers
per rank per step. At the first step after each checkpoint (or resume) every rank also
commits the SHA-256 of the model state it trains from (`state_digest`: the checkpoint's
bits, if rank 0 saved what the ranks hold). At each checkpoint the ranks all-gather all
of it (one collective per checkpoint), and every node's leader appends the whole table,
every rank's numbers, to `commitments.jsonl` in its workdir; its agent uploads it. The
verifier replays the first step of a failed segment from the checkpoint and names the
ranks whose committed gradient is not their share (replay.attribute_segment).

The vectors depend only on the job's seed and the parameter's index in
model.parameters(), never on DDP's buckets, so the replay (one process, no DDP) makes the
same ones. The hook reduces exactly as DDP's built-in reduction does (each rank's gradient
scaled by 1/W, then summed): training is bitwise what it is without the hook
(tests/test_commitments.py).

Pure torch: no Django.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.distributed as dist

K = 3  # projections per rank per step, of the gradient and of the parameters each
FILE = "commitments.jsonl"
DIGEST_BYTES = 32


def state_digest(state: dict) -> bytes:
    """SHA-256 over a model state's tensors by name: the same bits give the same digest,
    whether they are a rank's parameters or a checkpoint's (diloco_node.param_digest's too)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.digest()


class Projector:
    """Projections of per-parameter tensors onto K ±1 vectors keyed by (seed, parameter
    index); the vectors are made once and cached on the tensor's device (K·4 bytes per
    parameter)."""

    def __init__(self, seed: int, *, k: int = K):
        self.seed, self.k = seed, k
        self._cache: dict[int, torch.Tensor] = {}

    def _vectors(self, index: int, like: torch.Tensor) -> torch.Tensor:
        vectors = self._cache.get(index)
        if vectors is None:
            tag = hashlib.sha256(f"computemesh-commitments:{self.seed}:{index}".encode()).digest()
            gen = torch.Generator().manual_seed(int.from_bytes(tag[:8], "big") >> 1)
            signs = torch.randint(0, 2, (self.k, like.numel()), generator=gen, dtype=torch.int8)
            vectors = (signs.to(torch.float32) * 2 - 1).to(like.device)
            self._cache[index] = vectors
        return vectors

    @torch.no_grad()
    def project(self, index: int, tensor: torch.Tensor) -> torch.Tensor:
        """The K projections of one parameter's tensor, float64 on the tensor's device."""
        flat = tensor.detach().reshape(-1).to(torch.float64)
        return self._vectors(index, tensor).to(torch.float64) @ flat

    def project_all(self, tensors: Iterable[torch.Tensor | None]) -> torch.Tensor:
        """The sum over parameters (in index order) of their projections, float64 on the
        tensors' device (the CPU when all are None); None counts as zeros."""
        total: torch.Tensor | None = None
        for index, tensor in enumerate(tensors):
            if tensor is not None:
                part = self.project(index, tensor)
                total = part if total is None else total + part
        return total if total is not None else torch.zeros(self.k, dtype=torch.float64)


class Committer:
    """One rank's commitments: register `hook` on the DDP model, call `begin(step)` before
    the forward pass and `end()` after backward; `flush(...)` at a checkpoint step."""

    def __init__(self, model: torch.nn.Module, *, seed: int, world: int, device: torch.device):
        self.model = model
        self.params = list(model.parameters())
        self.index = {id(p): i for i, p in enumerate(self.params)}
        self.projector = Projector(seed)
        self.world, self.device = world, device
        self.step: int | None = None
        # Kept on the training device until the checkpoint: no copy to the host per step.
        self.param_proj = torch.zeros(K, dtype=torch.float64, device=device)
        self.grad_parts = torch.zeros(len(self.params), K, dtype=torch.float64, device=device)
        self.rows: list[torch.Tensor] = []  # (2, K) per step: gradient, parameters
        self.steps: list[int] = []
        self.start_digest = bytes(DIGEST_BYTES)  # the state the stretch's first step trained from

    def begin(self, step: int) -> None:
        if not self.rows:  # the first step after a checkpoint or the start: its exact state
            self.start_digest = state_digest(self.model.state_dict())
        self.step = step
        self.param_proj = self.projector.project_all(self.params)
        self.grad_parts.zero_()

    def end(self) -> None:
        grad = self.grad_parts.sum(dim=0)  # in parameter order, whatever the buckets' order
        self.rows.append(torch.stack([grad, self.param_proj]))
        self.steps.append(int(self.step))  # type: ignore[arg-type]

    def hook(self, state, bucket):  # no annotations: DDP compares them with the real classes
        """Project this rank's own gradients (a dist.GradBucket), then reduce as DDP's
        built-in reduction does; returns the reduction's future."""
        for param, grad in zip(bucket.parameters(), bucket.gradients(), strict=True):
            i = self.index[id(param)]
            self.grad_parts[i] = self.projector.project(i, grad)
        tensor = bucket.buffer()
        # The reducer without a hook scales while copying into the bucket by the reciprocal
        # (at::mul_out(grad, 1/W)); the same here keeps every bit the same for any W.
        tensor.mul_(1.0 / self.world)
        return (dist.all_reduce(tensor, async_op=True).get_future()
                .then(lambda fut: fut.value()[0]))

    def flush(self, *, writer: Path | None) -> tuple[int, int, int] | None:
        """All-gather the rows kept since the last flush (every rank calls this at the same
        step); the node's leader (`writer`: its commitments file) appends one JSON line per
        step. Returns (first step, offset, length) of what was appended, or None."""
        if not self.rows:
            return None
        # One flat float64 tensor: the rows, then the 32 digest bytes viewed as 4 float64
        # (all_gather copies bits, it computes nothing).
        digest = torch.tensor(list(self.start_digest), dtype=torch.uint8).view(torch.float64)
        mine = torch.cat([torch.stack(self.rows).flatten(), digest.to(self.rows[0].device)])
        parts = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(parts, mine)
        steps, self.rows, self.steps = self.steps, [], []
        if writer is None:
            return None
        n = len(steps) * 2 * K
        # (steps, world, 2, K)
        table = torch.stack([p[:n].cpu().view(len(steps), 2, K) for p in parts], dim=1)
        digests = [bytes(p[n:].cpu().view(torch.uint8).tolist()).hex() for p in parts]
        text = "".join(json.dumps({"step": s, "grad": table[i, :, 0].tolist(),
                                   "param": table[i, :, 1].tolist(),
                                   **({"model": digests} if i == 0 else {})}) + "\n"
                       for i, s in enumerate(steps)).encode()
        with open(writer, "ab") as fh:
            offset = fh.tell()
            fh.write(text)
        return steps[0], offset, len(text)
