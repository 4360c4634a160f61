"""This node's part of a DiLoCo job (the job's `sync` is diloco across nodes): its leader
keeps the global parameters and the outer optimizer and talks to the other nodes through
outer.py; every rank of the node then continues from the new global model."""

from __future__ import annotations

import hashlib

import torch
import torch.distributed as dist

from . import commitments, diloco, outer
from .group import job_secret

STARTUP_TIMEOUT_S = 120  # the host waits this long for the other leaders before step 1


def param_digest(model: torch.nn.Module) -> str:
    return commitments.state_digest(model.state_dict()).hex()


class DiLoCoNode:
    """This node's part of DiLoCo. Its leader (local rank 0) keeps the global parameters
    and the outer optimizer and talks to the other nodes (node rank 0's leader hosts the
    exchange); then every rank of the node continues from the new global model, handed
    over by a broadcast inside the node."""

    def __init__(self, *, spec: dict, sync: diloco.SyncConfig, model: torch.nn.Module, leader: bool,
                 node_rank: int, nnodes: int, start_step: int, outer_state: dict | None, log):
        self.sync, self.model, self.leader = sync, model, leader
        self.node_rank, self.nnodes, self.log = node_rank, nnodes, log
        self.params = list(model.parameters())
        self.shapes = [p.shape for p in self.params]
        self.global_params: list[torch.Tensor] = []
        self.opt = diloco.OuterNesterov(sync.outer_lr, sync.outer_momentum)
        self.opt.load_state_dict(outer_state)
        self.link: outer.OuterHost | outer.OuterMember | None = None
        if not leader:
            return
        self.global_params = [p.detach().cpu().float().clone() for p in self.params]
        address = spec["outer"]
        secret = job_secret(spec)  # every message between the nodes carries its HMAC
        if node_rank == 0:
            self.link = outer.OuterHost(port=int(address["port"]), precision=sync.precision,
                                        shapes=self.shapes, log=log, secret=secret,
                                        peer_timeout_s=float(spec.get("peer_timeout_s", 15)))
        else:
            self.link = outer.OuterMember(host=address["host"], port=int(address["port"]),
                                          precision=sync.precision, shapes=self.shapes,
                                          node_rank=node_rank, member=str(spec.get("member", "")),
                                          digest=self.digest(), step=start_step, log=log,
                                          advertise_host=spec.get("advertise_host"), secret=secret,
                                          peer_timeout_s=float(spec.get("peer_timeout_s", 15)))

    @property
    def sent(self) -> int:
        return self.link.sent if self.link is not None else 0

    def digest(self) -> str:
        digest = hashlib.sha256()
        for tensor in self.global_params:
            digest.update(tensor.contiguous().numpy().tobytes())
        return digest.hexdigest()

    def _state(self) -> tuple[dict, bytes]:
        tensors = self.global_params + (self.opt.buffers or [])
        return {"momentum": self.opt.buffers is not None}, diloco.encode(tensors, "fp32")

    @torch.no_grad()
    def _publish(self) -> None:
        """Every rank of the node takes the leader's global parameters."""
        for param, value in zip(self.params, self.global_params or self.params, strict=True):
            if self.leader:
                param.copy_(value.to(param.device))
            dist.broadcast(param.data, src=0)

    def start(self, step: int) -> int | None:
        """Join the other nodes. Returns the step to train from, or None when the job ended
        before this node could join."""
        status = torch.tensor([step, 0], dtype=torch.long)
        if isinstance(self.link, outer.OuterHost):
            self.link.wait_for_joiners(self.nnodes - 1, STARTUP_TIMEOUT_S)
            self.link.admit(round_=step, step=step, digest=self.digest(), state=self._state)
        elif isinstance(self.link, outer.OuterMember):
            admitted = self.link.join()
            if admitted is None:
                status[1] = 1
            else:
                if admitted["params"] is not None:
                    self.global_params = admitted["params"]
                    self.opt.load_state_dict({"buffers": admitted["momentum"]})
                status[0] = admitted["step"]
                self.log(f"outer: node rank {self.node_rank} joined at step {admitted['step']}")
        if status.device.type != self.params[0].device.type:
            status = status.to(self.params[0].device)
        dist.broadcast(status, src=0)
        if int(status[1]):
            return None
        self._publish()
        return int(status[0])

    def outer_step(self, step: int, *, final: bool) -> dict | None:
        """Average the nodes' pseudo-gradients Δ = θ_global − θ_local and apply the outer
        Nesterov step; every rank continues from the new global parameters."""
        header = None
        if self.leader:
            assert self.link is not None  # every leader opened its link in __init__
            local = [p.detach().cpu().float() for p in self.params]
            pseudo = [g - x for g, x in zip(self.global_params, local, strict=True)]
            average, header = self.link.exchange(step, pseudo, final=final)
            self.opt.step(self.global_params, average)
            if isinstance(self.link, outer.OuterHost):
                self.link.admit(round_=step, step=step, digest=self.digest(), state=self._state,
                                finished=final)
                if final:
                    self.link.finish(step)
        self._publish()
        return header

    def close(self) -> None:
        if self.link is not None:
            self.link.close()
