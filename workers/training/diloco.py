"""DiLoCo's pure parts: the sync settings, wire encodings of pseudo-gradients, the outer
Nesterov optimizer and the byte accounting of both modes.

DiLoCo (Douillard et al. 2023) lets each node take H inner steps on its own, then
averages the pseudo-gradients Δ = θ_global − θ_local across nodes and applies them to the
global parameters with an outer Nesterov-momentum SGD. Only Δ crosses the wide-area
link, once every H steps, in fp32, fp16 or int8 (per-tensor scale).

Nothing here talks to the network; `outer.py` carries these payloads between nodes, in
chunks of the flattened parameters (one owner per chunk, see `chunk_bounds`).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

PRECISIONS = ("fp32", "fp16", "int8")
BYTES_PER_ELEMENT = {"fp32": 4, "fp16": 2, "int8": 1}
INT8_LEVELS = 127  # symmetric: -127 … 127, so that 0 is exact and the scale is max|x| / 127
FP16_MAX = 65504.0


@dataclass(frozen=True)
class SyncConfig:
    """The job's `sync` field as the runtime uses it; the platform has validated it."""

    mode: str = "ddp"
    inner_steps: int = 50
    outer_lr: float = 0.7
    outer_momentum: float = 0.9
    precision: str = "fp32"

    @classmethod
    def from_spec(cls, raw: dict | None) -> SyncConfig:
        raw = dict(raw or {})
        if raw.get("mode", "ddp") != "diloco":
            return cls()
        defaults = cls(mode="diloco")
        return cls(mode="diloco",
                   inner_steps=max(1, int(raw.get("inner_steps", defaults.inner_steps))),
                   outer_lr=float(raw.get("outer_lr", defaults.outer_lr)),
                   outer_momentum=float(raw.get("outer_momentum", defaults.outer_momentum)),
                   precision=str(raw.get("precision", defaults.precision)))

    def as_dict(self) -> dict:
        return asdict(self)


# --- wire encodings --------------------------------------------------------------------
def quantize_int8(t: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Symmetric per-tensor int8: q = round(x / s) with s = max|x| / 127.
    Every element comes back within s / 2 of where it was (see `int8_error_bound`)."""
    flat = t.detach().float().reshape(-1)
    peak = float(flat.abs().max()) if flat.numel() else 0.0
    scale = peak / INT8_LEVELS if peak > 0 else 1.0
    q = torch.round(flat / scale).clamp_(-INT8_LEVELS, INT8_LEVELS).to(torch.int8)
    return scale, q


def dequantize_int8(scale: float, q: torch.Tensor) -> torch.Tensor:
    return q.float() * scale


def int8_error_bound(t: torch.Tensor) -> float:
    """The largest |x − decode(encode(x))| int8 allows for this tensor: half a step."""
    peak = float(t.detach().float().abs().max()) if t.numel() else 0.0
    return peak / INT8_LEVELS / 2


def payload_bytes(numels: Sequence[int], precision: str) -> int:
    """Exact size of `encode` for tensors of these sizes (int8 adds one fp32 scale each)."""
    size = sum(numels) * BYTES_PER_ELEMENT[precision]
    return size + 4 * len(numels) if precision == "int8" else size


def encode(tensors: Sequence[torch.Tensor], precision: str) -> bytes:
    """Tensors → bytes in the wire precision (little-endian, concatenated in order; int8
    puts every tensor's fp32 scale first)."""
    flats = [t.detach().float().reshape(-1).cpu() for t in tensors]
    if precision == "fp32":
        return torch.cat(flats).numpy().tobytes() if flats else b""
    if precision == "fp16":
        return (torch.cat(flats).clamp(-FP16_MAX, FP16_MAX).half().numpy().tobytes()
                if flats else b"")
    if precision == "int8":
        scales, qs = zip(*(quantize_int8(f) for f in flats), strict=True) if flats else ((), ())
        head = struct.pack(f"<{len(scales)}f", *scales)
        return head + (torch.cat(qs).numpy().tobytes() if qs else b"")
    raise ValueError(f"unknown precision {precision}")


def decode(data: bytes, shapes: Sequence[torch.Size], precision: str) -> list[torch.Tensor]:
    numels = [int(torch.Size(s).numel()) for s in shapes]
    if len(data) != payload_bytes(numels, precision):
        raise ValueError(f"payload of {len(data)} bytes does not fit {len(shapes)} tensors in {precision}")
    if precision == "int8":
        scales = struct.unpack_from(f"<{len(shapes)}f", data)
        values = torch.frombuffer(bytearray(data[4 * len(shapes):]), dtype=torch.int8)
    elif precision == "fp16":
        values = torch.frombuffer(bytearray(data), dtype=torch.float16).float()
    else:
        values = torch.frombuffer(bytearray(data), dtype=torch.float32)
    out, at = [], 0
    for i, (shape, n) in enumerate(zip(shapes, numels, strict=True)):
        chunk = values[at:at + n]
        if precision == "int8":
            chunk = dequantize_int8(scales[i], chunk)
        out.append(chunk.clone().reshape(shape))
        at += n
    return out


# --- chunks of the flattened parameters (the bandwidth-balanced exchange) ----------------
def chunk_bounds(total: int, parts: int) -> list[tuple[int, int]]:
    """[lo, hi) of each of `parts` near-equal chunks of `total` elements; member i of an
    outer round owns chunk i."""
    return [(total * i // parts, total * (i + 1) // parts) for i in range(parts)]


def chunk_pieces(numels: Sequence[int], lo: int, hi: int) -> list[int]:
    """Sizes of the pieces of [lo, hi) of the concatenated tensors, cut where one tensor
    ends: each piece gets its own int8 scale, so a chunk is scaled as finely as whole
    tensors are (a tensor of tiny values never shares a scale with one of large values)."""
    sizes, start = [], 0
    for n in numels:
        a, b = max(lo, start), min(hi, start + n)
        if a < b:
            sizes.append(b - a)
        start += n
    return sizes


def encode_chunk(values: torch.Tensor, pieces: Sequence[int], precision: str) -> bytes:
    """A 1-D slice of the flattened parameters → bytes, one scale per piece in int8."""
    return encode(list(values.split(list(pieces))), precision) if pieces else b""


def decode_chunk(data: bytes, pieces: Sequence[int], precision: str) -> torch.Tensor:
    if not pieces:
        if data:
            raise ValueError(f"payload of {len(data)} bytes for an empty chunk")
        return torch.zeros(0)
    return torch.cat(decode(data, [torch.Size([n]) for n in pieces], precision))


def pack(header: dict, body: bytes = b"") -> bytes:
    """One message: a 4-byte length, a JSON header, the binary body."""
    head = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack(">I", len(head)) + head + body


def unpack(message: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack_from(">I", message)
    return json.loads(message[4:4 + n]), message[4 + n:]


# --- the outer optimizer -----------------------------------------------------------------
class OuterNesterov:
    """SGD with Nesterov momentum on the global parameters, as torch.optim.SGD(nesterov=True)
    computes it (buffer b ← μ·b + g, first b = g; θ ← θ − lr·(g + μ·b)), written out so that
    every node applies bit-for-bit the same arithmetic and the state is plain tensors."""

    def __init__(self, lr: float, momentum: float):
        self.lr, self.momentum = lr, momentum
        self.buffers: list[torch.Tensor] | None = None

    @torch.no_grad()
    def step(self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> None:
        if self.buffers is None:
            self.buffers = [g.detach().clone() for g in grads]
        else:
            for b, g in zip(self.buffers, grads, strict=True):
                b.mul_(self.momentum).add_(g)
        for p, g, b in zip(params, grads, self.buffers, strict=True):
            p.sub_(g.add(b, alpha=self.momentum), alpha=self.lr)

    def state_dict(self) -> dict:
        return {"lr": self.lr, "momentum": self.momentum, "buffers": self.buffers}

    def load_state_dict(self, state: dict | None) -> None:
        # The learning rate and momentum come from the job spec, never from a checkpoint.
        buffers = (state or {}).get("buffers")
        self.buffers = [b.clone().float() for b in buffers] if buffers else None


# --- byte accounting -------------------------------------------------------------------------
def ring_allreduce_bytes(size: int, world: int) -> int:
    """Bytes one rank sends in a ring all-reduce of `size` bytes over `world` ranks
    (reduce-scatter then all-gather: 2·(n−1) chunks of size/n). Computed, not measured."""
    return 0 if world <= 1 else 2 * (world - 1) * size // world


def ddp_node_bytes_per_step(param_bytes: int, *, nnodes: int, nproc_per_node: int) -> int:
    """What DDP sends out of one node per step: gloo's ring runs in rank order and a node's
    ranks are consecutive, so exactly one hop per node crosses the node's link, carrying a
    full rank's share of the ring all-reduce of the fp32 gradients."""
    if nnodes <= 1:
        return 0
    return ring_allreduce_bytes(param_bytes, nnodes * nproc_per_node)
