"""One `Client` for the public REST API (the OpenAPI document at /api/schema/).

Every operation is a row of OPERATIONS (name → method and path), and every method goes
through that table, so a test can hold the table against the server's OpenAPI document.
Long on purpose: one thin method per API operation over one transport (resumable uploads
live in uploads.py, the live stream in live.py); splitting it would split the table.

Retries: a request that never reached the server (the connection was refused) is always
retried; a request the server may have acted on is retried (after a dropped connection, a
timeout, 429, 502, 503 or 504) only when the operation is idempotent: reads, and the writes
the API documents as idempotent (cancel, fund, budget — the body is the new total — and
stake operations, which carry a `request_id` the client generates once per call).
Submitting a job and uploading a dataset send an `Idempotency-Key` header, fresh for each
call and the same on every retry of it, so a resend after a timeout returns the first
answer instead of creating a second job. Creating a node or an offer has no such key and
is never resent after the server may have seen it.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, cast
from urllib.parse import quote

import httpx

from . import errors
from .types import JSON, Bundle, Dataset, Job, Me, Node, Offer, Page, Quote, StakeOperation, Template
from .uploads import DEFAULT_CHUNK, Progress, resumable_upload, upload_offset

API = "/api/v1"

# name: (method, path, idempotent). Paths are the OpenAPI document's, `{id}`/`{name}` kept.
OPERATIONS: dict[str, tuple[str, str, bool]] = {
    "auth_token": ("POST", "/api/v1/auth/token/", False),
    "me": ("GET", "/api/v1/me/", True),
    "templates_list": ("GET", "/api/v1/templates/", True),
    "templates_get": ("GET", "/api/v1/templates/{name}/", True),
    "offers_list": ("GET", "/api/v1/offers/", True),
    "offers_get": ("GET", "/api/v1/offers/{id}/", True),
    "offers_mine": ("GET", "/api/v1/offers/mine/", True),
    "offers_create": ("POST", "/api/v1/offers/", False),
    "offers_update": ("PATCH", "/api/v1/offers/{id}/", True),
    "offers_pause": ("POST", "/api/v1/offers/{id}/pause/", True),
    "offers_resume": ("POST", "/api/v1/offers/{id}/resume/", True),
    "nodes_list": ("GET", "/api/v1/nodes/", True),
    "nodes_get": ("GET", "/api/v1/nodes/{id}/", True),
    "nodes_create": ("POST", "/api/v1/nodes/", False),
    "nodes_update": ("PATCH", "/api/v1/nodes/{id}/", True),
    "nodes_rotate_token": ("POST", "/api/v1/nodes/{id}/rotate-token/", False),
    "jobs_list": ("GET", "/api/v1/jobs/", True),
    "jobs_get": ("GET", "/api/v1/jobs/{id}/", True),
    "jobs_create": ("POST", "/api/v1/jobs/", True),  # with its Idempotency-Key
    "jobs_quote": ("POST", "/api/v1/jobs/quote/", True),
    "jobs_cancel": ("POST", "/api/v1/jobs/{id}/cancel/", True),
    "jobs_fund": ("POST", "/api/v1/jobs/{id}/fund/", True),
    "jobs_budget": ("POST", "/api/v1/jobs/{id}/budget/", True),
    "jobs_fund_calls": ("GET", "/api/v1/jobs/{id}/fund-calls/", True),
    "jobs_artifact": ("GET", "/api/v1/jobs/{id}/artifact/", True),
    "jobs_checkpoint": ("GET", "/api/v1/jobs/{id}/checkpoint/", True),
    "jobs_verification": ("GET", "/api/v1/jobs/{id}/verification/", True),
    "jobs_metrics": ("GET", "/api/v1/jobs/{id}/metrics/", True),
    "jobs_logs": ("GET", "/api/v1/jobs/{id}/logs/", True),
    "datasets_list": ("GET", "/api/v1/datasets/", True),
    "datasets_create": ("POST", "/api/v1/datasets/", True),  # with its Idempotency-Key
    "datasets_delete": ("DELETE", "/api/v1/datasets/{id}/", True),
    # Resumable uploads (uploads.py): a PATCH is resent only at the server's offset.
    "uploads_list": ("GET", "/api/v1/uploads/", True),
    "uploads_create": ("POST", "/api/v1/uploads/", False),
    "uploads_get": ("GET", "/api/v1/uploads/{id}/", True),
    "uploads_patch": ("PATCH", "/api/v1/uploads/{id}/", False),
    "uploads_finish": ("POST", "/api/v1/uploads/{id}/finish/", True),
    "uploads_delete": ("DELETE", "/api/v1/uploads/{id}/", True),
    "bundles_list": ("GET", "/api/v1/bundles/", True),
    "bundles_create": ("POST", "/api/v1/bundles/", True),  # content-addressed: the same bundle again
    "bundles_get": ("GET", "/api/v1/bundles/{id}/", True),
    "bundles_delete": ("DELETE", "/api/v1/bundles/{id}/", True),
    "runtimes_list": ("GET", "/api/v1/runtimes/", True),
    "wallets_list": ("GET", "/api/v1/wallets/", True),
    "wallets_payout": ("GET", "/api/v1/wallets/payout/", True),
    "wallets_set_payout": ("POST", "/api/v1/wallets/{id}/payout/", True),
    # A faucet grant or a dispute may have been made by a request that timed out: never resent.
    "account_get": ("GET", "/api/v1/account/", True),
    "account_faucet": ("POST", "/api/v1/account/faucet/", False),
    "jobs_disputes": ("GET", "/api/v1/jobs/{id}/disputes/", True),
    "jobs_dispute_open": ("POST", "/api/v1/jobs/{id}/disputes/", False),
    "jobs_statement_file": ("GET", "/api/v1/jobs/{id}/statement/{fmt}/", True),
    "account_statement_file": ("GET", "/api/v1/account/statements/{year}-{month}/{fmt}/", True),
    "stake_get": ("GET", "/api/v1/stake/", True),
    "stake_deposit": ("POST", "/api/v1/stake/deposit/", True),
    "stake_request_withdrawal": ("POST", "/api/v1/stake/request-withdrawal/", True),
    "stake_withdraw": ("POST", "/api/v1/stake/withdraw/", True),
}

RETRY_STATUSES = {429, 502, 503, 504}
# Where a job's story ends (marketplace/job_states.py TERMINAL).
TERMINAL = frozenset({"completed", "settled", "cancelled", "failed", "refunded"})
FAILED = frozenset({"cancelled", "failed", "refunded"})


def job_succeeded(job: Mapping[str, Any]) -> bool | None:
    """True once the job completed (settled after completing included), False if it ended
    otherwise, None while it runs."""
    status = job.get("status")
    if status == "completed":
        return True
    if status in FAILED:
        return False
    if status == "settled":  # after completing, or after a cancel/failure was paid out
        reached = {e.get("to_status") for e in job.get("timeline") or job.get("events") or []}
        return "completed" in reached
    return None


class Client:
    """`Client(url, token)`; `Client.from_env()` reads COMPUTEMESH_URL / COMPUTEMESH_TOKEN."""

    def __init__(self, url: str = "http://127.0.0.1:8000", token: str | None = None, *,
                 timeout: float = 30.0, retries: int = 3, backoff_s: float = 0.5,
                 transport: httpx.BaseTransport | None = None):
        self.url = url.rstrip("/")
        self.token = token
        self.retries = retries
        self.backoff_s = backoff_s
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport,
                                  headers={"Accept": "application/json",
                                           "User-Agent": "computemesh-client/0.1"})

    @classmethod
    def from_env(cls, **kwargs: Any) -> Client:
        if os.environ.get("COMPUTEMESH_RETRIES"):
            kwargs.setdefault("retries", int(os.environ["COMPUTEMESH_RETRIES"]))
        return cls(os.environ.get("COMPUTEMESH_URL", "http://127.0.0.1:8000"),
                   os.environ.get("COMPUTEMESH_TOKEN") or None, **kwargs)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ----------------------------------------------------------------------
    def _headers(self, auth: bool) -> dict[str, str]:
        return {"Authorization": f"Token {self.token}"} if auth and self.token else {}

    def _send(self, op: str, *, path_args: dict[str, Any] | None = None,
              params: Any = None, json: Any = None, files: Any = None, data: Any = None,
              auth: bool = True, stream: bool = False,
              headers: dict[str, str] | None = None, content: bytes | None = None,
              retry: bool = True, method_override: str | None = None,
              timeout: float | None = None) -> httpx.Response:
        method, template, idempotent = OPERATIONS[op]
        method = method_override or method
        path = template.format(**{k: _segment(v) for k, v in (path_args or {}).items()})
        attempt = 0
        while True:
            attempt += 1
            retry_in: float | None = None
            for part in (files or {}).values():  # a resent upload starts from its first byte
                if isinstance(part, tuple) and hasattr(part[1], "seek"):
                    part[1].seek(0)
            try:
                request = self._http.build_request(method, path, params=params, json=json,
                                                   files=files, data=data, content=content,
                                                   timeout=(httpx.USE_CLIENT_DEFAULT if timeout is None
                                                            else timeout),
                                                   headers={**self._headers(auth), **(headers or {})})
                response = self._http.send(request, stream=stream)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # never reached it: safe to resend
                if attempt > self.retries or not retry:
                    raise errors.NetworkError(f"cannot reach {self.url}: {_reason(exc)}") from None
            except httpx.TransportError as exc:  # it may have acted on it
                if not idempotent or attempt > self.retries or not retry:
                    raise errors.NetworkError(f"{method} {path} to {self.url} failed: "
                                              f"{_reason(exc)}") from None
            else:
                if response.status_code < 400:
                    return response
                if (response.status_code in RETRY_STATUSES and idempotent and retry
                        and attempt <= self.retries):
                    retry_in = _retry_after(response)
                    response.close()
                else:
                    raise self._error(response, method, path)
            delay = self.backoff_s * 2 ** (attempt - 1)
            time.sleep(min(30.0, max(delay, retry_in or 0.0)))

    def _error(self, response: httpx.Response, method: str, path: str) -> errors.APIError:
        try:
            response.read()
            body = response.json()
        except ValueError:
            body = {"detail": f"HTTP {response.status_code} from {method} {path}",
                    "code": "http_error"}
        finally:
            response.close()
        return errors.error_for(response.status_code, body, method=method, path=path,
                                retry_after=_retry_after(response))

    def _json(self, op: str, **kwargs: Any) -> Any:
        response = self._send(op, **kwargs)
        return response.json() if response.content else None

    def _pages(self, op: str, params: dict[str, Any]) -> Iterator[JSON]:
        page = 1
        while True:
            body = self._json(op, params={**params, "page": page})
            yield from body["results"]
            if not body.get("next"):
                return
            page += 1

    # --- auth --------------------------------------------------------------------------
    def login(self, username: str, password: str) -> str:
        """Exchange a username and password for an API token; the client uses it from now."""
        body = self._json("auth_token", json={"username": username, "password": password},
                          auth=False)
        self.token = body["token"]
        return cast(str, self.token)

    def me(self) -> Me:
        """Who the token belongs to: username, organization (id, name, kind), role, is_staff."""
        return cast(Me, self._json("me"))

    def check_token(self) -> bool:
        """Whether the server accepts this client's token (a cheap authenticated read)."""
        try:
            self.me()
        except errors.AuthenticationError:
            return False
        return True

    # --- templates ---------------------------------------------------------------------
    def templates(self) -> list[Template]:
        return cast(list[Template], self._json("templates_list"))

    def template(self, name: str) -> Template:
        return cast(Template, self._json("templates_get", path_args={"name": name}))

    # --- offers ------------------------------------------------------------------------
    def offers(self, *, page: int = 1, page_size: int = 20, **filters: Any) -> Page:
        """One page of the public offer search. Filters as the API names them: gpu_model,
        min_gpus, min_gpu_memory_gb, region, compliance (lists allowed), max_price,
        min_reliability, online, ordering."""
        return cast(Page, self._json("offers_list", params={**_query(filters), "page": page,
                                                             "page_size": page_size}))

    def iter_offers(self, **filters: Any) -> Iterator[Offer]:
        return cast(Iterator[Offer], self._pages("offers_list", {**_query(filters), "page_size": 100}))

    def my_offers(self, *, page: int = 1, page_size: int = 20, **filters: Any) -> Page:
        """One page of your organization's offers, paused ones included (providers); the
        search's filters apply."""
        return cast(Page, self._json("offers_mine", params={**_query(filters), "page": page,
                                                             "page_size": page_size}))

    def iter_my_offers(self, **filters: Any) -> Iterator[Offer]:
        return cast(Iterator[Offer], self._pages("offers_mine", {**_query(filters), "page_size": 100}))

    def offer(self, offer_id: int) -> Offer:
        return cast(Offer, self._json("offers_get", path_args={"id": offer_id}))

    def offer_create(self, *, node: int, gpus_offered: int, price_per_gpu_hour: str | float,
                     **fields: Any) -> Offer:
        body = {"node": node, "gpus_offered": gpus_offered,
                "price_per_gpu_hour": str(price_per_gpu_hour), **fields}
        return cast(Offer, self._json("offers_create", json=body))

    def offer_update(self, offer_id: int, **fields: Any) -> Offer:
        return cast(Offer, self._json("offers_update", path_args={"id": offer_id}, json=fields))

    def offer_pause(self, offer_id: int) -> Offer:
        return cast(Offer, self._json("offers_pause", path_args={"id": offer_id}))

    def offer_resume(self, offer_id: int) -> Offer:
        return cast(Offer, self._json("offers_resume", path_args={"id": offer_id}))

    # --- nodes (providers) -------------------------------------------------------------
    def nodes(self, *, page: int = 1, page_size: int = 100) -> Page:
        return cast(Page, self._json("nodes_list", params={"page": page, "page_size": page_size}))

    def iter_nodes(self) -> Iterator[Node]:
        return cast(Iterator[Node], self._pages("nodes_list", {"page_size": 100}))

    def node(self, node_id: int) -> Node:
        return cast(Node, self._json("nodes_get", path_args={"id": node_id}))

    def node_create(self, **fields: Any) -> Node:
        """Register a machine (name, gpu_model, gpu_count, gpu_memory_gb, cpu_cores, ram_gb,
        disk_gb, region, …); the answer carries its agent token, shown this once."""
        return cast(Node, self._json("nodes_create", json=fields))

    def node_update(self, node_id: int, **fields: Any) -> Node:
        return cast(Node, self._json("nodes_update", path_args={"id": node_id}, json=fields))

    def node_rotate_token(self, node_id: int) -> Node:
        return cast(Node, self._json("nodes_rotate_token", path_args={"id": node_id}))

    # --- jobs --------------------------------------------------------------------------
    def quote(self, spec: JSON) -> Quote:
        """Which offers would take this job now, at what cost, and if none, why (`reasons`)."""
        return cast(Quote, self._json("jobs_quote", json=spec))

    def submit(self, spec: JSON, *, idempotency_key: str | None = None) -> Job:
        """Submit a job. Every try of this call sends one Idempotency-Key (a fresh UUID
        unless given), so a retry after a timeout returns the first job, never a second."""
        return cast(Job, self._json("jobs_create", json=spec,
                                    headers=_idempotency(idempotency_key)))

    def jobs(self, *, status: str | list[str] | None = None, page: int = 1,
             page_size: int = 20) -> Page:
        return cast(Page, self._json("jobs_list", params={**_query({"status": status}), "page": page,
                                                           "page_size": page_size}))

    def iter_jobs(self, *, status: str | list[str] | None = None) -> Iterator[Job]:
        return cast(Iterator[Job], self._pages("jobs_list", {**_query({"status": status}),
                                                             "page_size": 100}))

    def job(self, job_id: int) -> Job:
        return cast(Job, self._json("jobs_get", path_args={"id": job_id}))

    def cancel(self, job_id: int) -> Job:
        return cast(Job, self._json("jobs_cancel", path_args={"id": job_id}))

    def fund(self, job_id: int, amount: str | None = None) -> Job:
        """Fund the escrow from the organization's custodial (development) wallet."""
        body = {"amount": str(amount)} if amount is not None else {}
        return cast(Job, self._json("jobs_fund", path_args={"id": job_id}, json=body))

    def fund_calls(self, job_id: int, address: str | None = None) -> JSON:
        """The approve and fund transactions an external (browser) wallet sends."""
        params = {"address": address} if address else None
        return cast(JSON, self._json("jobs_fund_calls", path_args={"id": job_id}, params=params))

    def raise_budget(self, job_id: int, budget: str | float) -> Job:
        return cast(Job, self._json("jobs_budget", path_args={"id": job_id},
                                    json={"budget": str(budget)}))

    def statement(self, job_id: int) -> JSON | None:
        """The settlement statement (charged, fee, refunded, lines, payouts, transaction), or
        None before settlement or where the escrow is off."""
        escrow = self.job(job_id).get("escrow")
        return escrow.get("statement") if escrow else None

    def metrics(self, job_id: int, after_seq: int = 0) -> list[JSON]:
        return cast(list[JSON], self._json("jobs_metrics", path_args={"id": job_id},
                                           params={"after_seq": after_seq}))

    def logs(self, job_id: int, *, after: int = 0, rank: int | None = None, q: str = "",
             limit: int | None = None) -> Iterator[JSON]:
        """The job's output lines in order ({seq, rank, stream, line, at}; rank None: the
        launcher's own), the provider's paths redacted; `rank` and `q` (a substring) filter.
        Pages through the API 1,000 lines at a time."""
        sent = 0
        while True:
            params: dict[str, Any] = {"after": after}
            if rank is not None:
                params["rank"] = rank
            if q:
                params["q"] = q
            lines = self._json("jobs_logs", path_args={"id": job_id}, params=params)["lines"]
            for line in lines:
                if limit is not None and sent >= limit:
                    return
                yield line
                sent += 1
            if len(lines) < 1000:
                return
            after = lines[-1]["seq"]

    def verification_report(self, job_id: int) -> JSON:
        return cast(JSON, self._json("jobs_verification", path_args={"id": job_id}))

    def download_model(self, job_id: int, dest: str | Path | BinaryIO | None = None) -> Path | None:
        """Stream the trained model to `dest` (a path, a folder, or a binary file object;
        default `computemesh-job-<id>-model.pt` here). Returns the path written."""
        return self._download("jobs_artifact", job_id, dest, f"computemesh-job-{job_id}-model.pt",
                              f"job {job_id}'s model")

    def download_checkpoint(self, job_id: int, dest: str | Path | BinaryIO | None = None) -> Path | None:
        """Stream the job's partial result (its newest trusted checkpoint: what a cancelled,
        failed, paused or interrupted job paid for) to `dest`, as `download_model` does."""
        return self._download("jobs_checkpoint", job_id, dest, f"computemesh-job-{job_id}-checkpoint.pt",
                              f"job {job_id}'s checkpoint")

    def statement_file(self, job_id: int, fmt: str = "csv",
                       dest: str | Path | BinaryIO | None = None) -> Path | None:
        """A settled job's statement as a file: `fmt` "csv" or "pdf" (default name
        `computemesh-job-<id>.<fmt>` here)."""
        return self._download("jobs_statement_file", job_id, dest, f"computemesh-job-{job_id}.{fmt}",
                              f"job {job_id}'s statement", path_args={"id": job_id, "fmt": fmt})

    def month_statement_file(self, year: int, month: int, fmt: str = "csv",
                             dest: str | Path | BinaryIO | None = None) -> Path | None:
        """The organization's money movements of one month as CSV or PDF."""
        return self._download("account_statement_file", 0, dest,
                              f"computemesh-{year}-{month:02d}.{fmt}", f"statement of {year}-{month:02d}",
                              path_args={"year": year, "month": month, "fmt": fmt})

    def _download(self, operation: str, job_id: int, dest: str | Path | BinaryIO | None, default: str,
                  what: str, *, path_args: dict[str, Any] | None = None) -> Path | None:
        response = self._send(operation, path_args=path_args or {"id": job_id}, stream=True)
        try:
            if dest is not None and not isinstance(dest, str | Path):
                for chunk in response.iter_bytes(1 << 16):
                    dest.write(chunk)
                return None
            name = _attachment_name(response) or default
            path = Path(dest) if dest is not None else Path(name)
            if path.is_dir() or str(dest).endswith(("/", os.sep)):
                path.mkdir(parents=True, exist_ok=True)
                path = path / name
            partial = path.with_name(path.name + ".part")
            try:
                with open(partial, "wb") as fh:
                    for chunk in response.iter_bytes(1 << 16):
                        fh.write(chunk)
            except httpx.TransportError as exc:
                partial.unlink(missing_ok=True)
                raise errors.NetworkError(f"download of {what} broke off: "
                                          f"{_reason(exc)}") from None
            partial.replace(path)
            return path
        finally:
            response.close()

    # --- datasets ----------------------------------------------------------------------
    def datasets(self, *, page: int = 1, page_size: int = 100) -> Page:
        return cast(Page, self._json("datasets_list", params={"page": page, "page_size": page_size}))

    def upload_dataset(self, path: str | Path, *, name: str = "", label_column: str = "",
                       idempotency_key: str | None = None) -> Dataset:
        """Upload a CSV file; the answer has its id (use it as a job's `dataset`), rows and
        columns. A 400 says what is wrong with the file. Retried under one Idempotency-Key,
        as `submit` is."""
        path = Path(path)
        data = {k: v for k, v in {"name": name or path.stem, "label_column": label_column}.items() if v}
        with open(path, "rb") as fh:
            return cast(Dataset, self._json("datasets_create", data=data,
                                            files={"file": (path.name, fh, "text/csv")},
                                            headers=_idempotency(idempotency_key)))

    def delete_dataset(self, dataset_id: int) -> None:
        """Delete a dataset and its stored file; a 409 (Conflict) while a job that has not
        finished uses it."""
        self._send("datasets_delete", path_args={"id": dataset_id}).close()

    def upload_dataset_resumable(self, path: str | Path, *, name: str = "", label_column: str = "",
                                 chunk_size: int = DEFAULT_CHUNK,
                                 progress: Progress | None = None) -> Dataset:
        """Upload a CSV or a zip of files (up to the server's limit, 10 GB by default) in
        chunks that survive breaks: an interrupted upload, in this call or a later one,
        resumes at the server's offset. `progress(sent, total)` is called after each chunk."""
        return cast(Dataset, resumable_upload(self, path, purpose="dataset", name=name,
                                              chunk_size=chunk_size, progress=progress,
                                              label_column=label_column))

    def upload_weights(self, path: str | Path, *, name: str = "", chunk_size: int = DEFAULT_CHUNK,
                       progress: Progress | None = None) -> Dataset:
        """Upload a fine-tune's starting weights: a torch state_dict saved with
        `torch.save(model.state_dict(), "weights.pt")` (a .pt or .pth file; tensors only).
        Stored as a dataset of kind "weights"; use the answer's id as a job's `weights`."""
        path = Path(path)
        if path.suffix.lower() not in (".pt", ".pth"):
            raise ValueError(f"{path.name}: a weights file is a .pt or .pth state_dict")
        return cast(Dataset, resumable_upload(self, path, purpose="dataset", name=name,
                                              chunk_size=chunk_size, progress=progress))

    # --- code bundles (your own training code) ----------------------------------------
    def bundles(self) -> list[Bundle]:
        return cast(list[Bundle], self._json("bundles_list"))

    def bundle(self, bundle_id: int) -> Bundle:
        return cast(Bundle, self._json("bundles_get", path_args={"id": bundle_id}))

    def upload_bundle(self, path: str | Path, *, runtime: str = "", entry: str = "",
                      params_schema: JSON | None = None, chunk_size: int = DEFAULT_CHUNK,
                      progress: Progress | None = None) -> Bundle:
        """Upload a task: a .py file or a .zip/.tar/.tar.gz of a package (resumable, as
        datasets are). An archive with a computemesh.toml declares its runtime, entry and
        params schema; otherwise give them here. Use the answer's id as a job's `bundle`."""
        return cast(Bundle, resumable_upload(self, path, purpose="bundle", chunk_size=chunk_size,
                                             progress=progress, runtime=runtime, entry=entry,
                                             params_schema=params_schema))

    def delete_bundle(self, bundle_id: int) -> None:
        """Delete a code bundle; a 409 (Conflict) while a job that has not finished uses it."""
        self._send("bundles_delete", path_args={"id": bundle_id}).close()

    def runtimes(self) -> list[JSON]:
        """The provider runtimes a bundle may ask for (name, python, packages)."""
        return cast(list[JSON], self._json("runtimes_list", auth=False))

    def uploads(self) -> list[JSON]:
        """Your organization's unfinished uploads (their offsets)."""
        return cast(list[JSON], self._json("uploads_list"))

    def upload_offset(self, upload_id: str) -> int:
        return upload_offset(self, upload_id)

    def abandon_upload(self, upload_id: str) -> None:
        self._send("uploads_delete", path_args={"id": upload_id}).close()

    # --- wallets and stake -------------------------------------------------------------
    def wallets(self) -> list[JSON]:
        return cast(list[JSON], self._json("wallets_list"))

    def account(self) -> JSON:
        """Balances (available, wallet, credited, escrowed, spent, refunded, earned, earning;
        tUSD as exact decimal strings) and every money movement, newest first."""
        return cast(JSON, self._json("account_get"))

    def faucet(self) -> JSON:
        """Test tUSD for the custodial wallet (development chains only): amount, address,
        transaction. Refused (ConflictError) on other chains or too soon after the last grant."""
        return cast(JSON, self._json("account_faucet"))

    def disputes(self, job_id: int) -> list[JSON]:
        """The disputes this organization opened on a job."""
        return cast(list[JSON], self._json("jobs_disputes", path_args={"id": job_id}))

    def open_dispute(self, job_id: int, reason: str) -> JSON:
        """Dispute a completed job's result; staff resolve it (refund, slash or reject)."""
        return cast(JSON, self._json("jobs_dispute_open", path_args={"id": job_id},
                                     json={"reason": reason}))

    def payout(self) -> JSON:
        """Where the organization is paid, and a pending change (providers)."""
        return cast(JSON, self._json("wallets_payout"))

    def set_payout_wallet(self, wallet_id: int) -> JSON:
        """Be paid to this wallet (an admin of the provider); takes effect after a delay."""
        return cast(JSON, self._json("wallets_set_payout", path_args={"id": wallet_id}))

    def stake(self) -> JSON:
        return cast(JSON, self._json("stake_get"))

    def _stake_op(self, op: str, body: JSON, request_id: str | None) -> StakeOperation:
        # One request_id for every try of this call: a resent request sends nothing new.
        body = {**body, "request_id": request_id or str(uuid.uuid4())}
        return cast(StakeOperation, self._json(op, json=body))

    def stake_deposit(self, amount: str | float, *, request_id: str | None = None) -> StakeOperation:
        return self._stake_op("stake_deposit", {"amount": str(amount)}, request_id)

    def stake_request_withdrawal(self, amount: str | float, *,
                                 request_id: str | None = None) -> StakeOperation:
        return self._stake_op("stake_request_withdrawal", {"amount": str(amount)}, request_id)

    def stake_withdraw(self, *, request_id: str | None = None) -> StakeOperation:
        return self._stake_op("stake_withdraw", {}, request_id)

    # --- live progress -----------------------------------------------------------------
    def watch(self, job_id: int, **kwargs: Any):
        """Live events of a job (a blocking generator; see live.watch_job for the async one)."""
        from .live import watch_job_blocking

        return watch_job_blocking(self.url, self.token, job_id, **kwargs)


def _idempotency(key: str | None) -> dict[str, str]:
    # Made once per call, before its first try: every retry carries the same key.
    return {"Idempotency-Key": key or str(uuid.uuid4())}


def _segment(value: Any) -> str:
    text = str(value)
    if not text or text in (".", ".."):
        raise errors.ComputeMeshError(f"not a valid id: {text!r}")
    return quote(text, safe="")


def _query(filters: dict[str, Any]) -> dict[str, Any]:
    """Drop unset filters; booleans as the API spells them; lists stay repeated parameters."""
    out: dict[str, Any] = {}
    for key, value in filters.items():
        if value is None or value == [] or value == ():
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, list | tuple):
            value = [str(v) for v in value]
        else:
            value = str(value)
        out[key] = value
    return out


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None


def _attachment_name(response: httpx.Response) -> str | None:
    disposition = response.headers.get("Content-Disposition", "")
    for part in disposition.split(";"):
        key, _, value = part.strip().partition("=")
        if key == "filename" and value:
            name = os.path.basename(value.strip('"'))
            return name or None
    return None


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]
