"""The shapes the API answers (its OpenAPI document at /api/schema/ is the contract; these
name the fields a client most often reads). Money is a decimal string in tUSD."""

from __future__ import annotations

from typing import Any, TypedDict

JSON = dict[str, Any]


class Page(TypedDict):
    count: int
    next: str | None
    previous: str | None
    results: list[JSON]


class Template(TypedDict, total=False):
    name: str
    title: str
    sector: str
    description: str
    metric: str
    dataset_kind: str
    params_schema: JSON
    defaults: JSON
    samples: list[JSON]


class Offer(TypedDict, total=False):
    id: int
    node: int
    node_name: str
    provider: str
    gpu_model: str
    gpu_memory_gb: int
    gpus_offered: int
    gpus_available: int
    price_per_gpu_hour: str
    unit: str
    region: str
    compliance: list[str]
    reliability: str | None
    is_new: bool
    online: bool
    accepts_custom_code: bool
    status: str


class QuoteReason(TypedDict):
    code: str
    constraint: str
    message: str


class Quote(TypedDict, total=False):
    feasible: bool
    candidates: list[JSON]
    estimated_cost: str | None
    estimated_start: str | None
    reasons: list[QuoteReason]
    sync: JSON
    traffic_vs_ddp: float


class Progress(TypedDict, total=False):
    step: int
    total_steps: int
    percent: float
    loss: float | None
    samples_per_sec: float | None
    eta_seconds: float | None
    metric: JSON | None
    last_seq: int


class Job(TypedDict, total=False):
    id: int
    name: str
    status: str
    status_display: str
    template: str
    params: JSON
    dataset: str
    nodes: int
    gpus_per_node: int
    budget: str
    deadline: str
    created_at: str
    status_changed_at: str
    timeline: list[JSON]
    progress: Progress | None
    assignments: list[JSON]
    artifact_url: str | None
    escrow: JSON | None
    spend: JSON
    verification: JSON


class MeOrganization(TypedDict):
    id: int
    name: str
    kind: str  # consumer or provider
    is_suspended: bool


class Me(TypedDict):
    username: str
    is_staff: bool
    organization: MeOrganization | None
    role: str | None  # owner, admin or member


class Dataset(TypedDict, total=False):
    id: int
    name: str
    kind: str  # "csv", "zip", or "weights" (a fine-tune's state_dict)
    entries: int  # a zip's files, a weights file's tensors
    rows: int
    columns: list[str]
    size_bytes: int
    sha256: str
    created_at: str


class Node(TypedDict, total=False):
    id: int
    name: str
    gpu_model: str
    gpu_count: int
    region: str
    status: str
    last_heartbeat_at: str | None
    agent_token: str


class StakeOperation(TypedDict):
    request_id: str
    kind: str
    amount: str | None
    address: str
    tx_hash: str
    tx_status: str


class Bundle(TypedDict, total=False):
    id: int
    name: str
    kind: str  # py, zip or tar
    size_bytes: int
    sha256: str
    runtime: str
    runtime_known: bool
    entry: str
    params_schema: JSON
    created_at: str
