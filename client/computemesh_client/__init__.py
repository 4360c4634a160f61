"""The ComputeMesh consumers' and providers' client: `Client` for the REST API, `watch_job`
(async) and `Client.watch` (blocking) for a job's live progress, typed errors."""

from .client import OPERATIONS, TERMINAL, Client, job_succeeded
from .errors import (
    APIError,
    AuthenticationError,
    ComputeMeshError,
    Conflict,
    JobFailed,
    NetworkError,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    ServerError,
    ValidationError,
)
from .live import LiveEvent, job_history, watch_job, watch_job_blocking

__version__ = "0.1.0"
__all__ = [
    "OPERATIONS", "TERMINAL", "APIError", "AuthenticationError", "Client", "ComputeMeshError",
    "Conflict", "JobFailed", "LiveEvent", "NetworkError", "NotFound", "PayloadTooLarge",
    "PermissionDenied", "RateLimited", "ServerError", "ValidationError", "job_history",
    "job_succeeded", "watch_job", "watch_job_blocking",
]
