"""What every step of a run does, as a function of the job spec alone: the batch each rank
takes (DistributedSampler order by seed and epoch), the random seed of each (rank, step),
the optimizer and one rank's forward/backward. The runtime (run.py) trains with these and
the verifier (replay.py) replays with them, so the two cannot drift apart."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data.distributed import DistributedSampler


def step_seed(seed: int, rank: int, step: int) -> int:
    return (seed * 1_000_003 + rank * 7_919 + step) % (2**63 - 1)


def batches(sampler: DistributedSampler, batch_size: int) -> list[list[int]]:
    indices = list(sampler)
    return [indices[i:i + batch_size] for i in range(0, len(indices) - batch_size + 1, batch_size)]


def sampler(n_train: int, *, world: int, rank: int, seed: int) -> DistributedSampler:
    # The sampler only takes len() of its dataset; torch's stubs demand a Dataset.
    return DistributedSampler(range(n_train), num_replicas=world, rank=rank, shuffle=True, seed=seed,  # type: ignore[arg-type]
                              drop_last=True)


@dataclass(frozen=True)
class Plan:
    """The step arithmetic of a run: batch size per rank, steps per epoch, total steps."""

    batch: int
    steps_per_epoch: int
    total_steps: int

    @classmethod
    def of(cls, *, n_train: int, world: int, params: dict, max_steps: int | None = None) -> Plan:
        per_rank = len(sampler(n_train, world=world, rank=0, seed=0))
        batch = int(params["batch_size"])
        steps_per_epoch = max(1, per_rank // batch)
        batch = min(batch, per_rank)
        total = int(params["epochs"]) * steps_per_epoch
        if max_steps:  # benchmarks: stop after exactly this many steps
            total = min(total, int(max_steps))
        return cls(batch=batch, steps_per_epoch=steps_per_epoch, total_steps=total)

    def checkpoint_every(self, params: dict, verify: dict | None) -> int:
        """Steps between checkpoints: the job's own cadence, or less when the platform asks
        for segments small enough that replaying `segments` of them costs at most
        `replay_share` of the training (docs/architecture.md, Verification)."""
        every = int(params.get("checkpoint_every", 50))
        if verify:
            share, segments = float(verify.get("replay_share", 0)), int(verify.get("segments", 1))
            if share > 0 and segments > 0:
                every = min(every, max(1, int(self.total_steps * share / segments)))
        return max(1, every)


def rank_indices(n_train: int, plan: Plan, *, world: int, rank: int, seed: int,
                 step: int) -> list[int]:
    """The training-set indices rank `rank` takes at step `step` (0-based: the step that
    turns the checkpoint at `step` into the one at `step + 1`)."""
    s = sampler(n_train, world=world, rank=rank, seed=seed)
    s.set_epoch(step // plan.steps_per_epoch)
    return batches(s, plan.batch)[step % plan.steps_per_epoch]


def optimizer(model: torch.nn.Module, params: dict) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=float(params["learning_rate"]))


def load_optimizer(opt: torch.optim.Optimizer, state: dict, params: dict) -> None:
    """Restore a checkpoint's optimizer state. Hyper-parameters come from the job spec,
    never from the checkpoint (load_state_dict would restore its learning rate)."""
    opt.load_state_dict(state)
    for group in opt.param_groups:
        group["lr"] = float(params["learning_rate"])
