"""The OpenAPI document is the contract (docs/api.md): every operation lists the error
answers it can give, all in one shape (`Error`). The views name the ones particular to
them (with their own descriptions); this hook adds those that follow from what the
operation is: anything can be throttled (429) or refused for its credentials (401, 403);
an operation with a path id or pages can miss (404); one with a body can find it unreadable (400),
too large (413), without a length (411) or of a type it does not take (415); a write can
conflict with the object's state (409)."""

from typing import Any

ERROR_REF = {"$ref": "#/components/schemas/Error"}
ERROR_SCHEMA = {
    "type": "object",
    "description": "Every error of the API: `detail` a sentence a person can act on, `field` "
                   "the input at fault (or null), `code` machine-readable; `errors` lists every "
                   "field's messages for invalid input.",
    "properties": {
        "detail": {"type": "string"},
        "field": {"type": "string", "nullable": True},
        "code": {"type": "string"},
        "errors": {"type": "object",
                   "additionalProperties": {"type": "array", "items": {"type": "string"}}},
    },
    "required": ["detail", "field", "code"],
}
DESCRIPTIONS = {
    400: "Invalid input (body, query or header); `field` names it.",
    401: "Not authenticated, or the credentials are not valid.",
    403: "Not allowed (your organization's role, a suspended organization, CSRF).",
    404: "Not found (or not yours).",
    409: "Not possible in the object's current state.",
    411: "A body without a Content-Length.",
    413: "The body is larger than this address accepts.",
    415: "A body of a media type this operation does not take.",
    429: "Too many requests; `Retry-After` says when to try again.",
}
WRITES = {"post", "put", "patch", "delete"}


def _codes(path: str, method: str, operation: dict[str, Any]) -> set[int]:
    codes = {400, 429}
    if path != "/api/v1/auth/token/":
        codes |= {401, 403}
    if "{" in path or any(p.get("name") == "page" for p in operation.get("parameters", [])):
        codes.add(404)  # an object that is not there (or not yours), a page past the end
    if method in WRITES:
        codes.add(409)
    if "requestBody" in operation:
        codes |= {411, 413, 415}
    return codes


def error_responses_hook(result: dict, generator, request, public) -> dict:
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    for path, methods in result.get("paths", {}).items():
        for method, operation in methods.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            responses = operation.setdefault("responses", {})
            for code in sorted(_codes(path, method, operation)):
                responses.setdefault(str(code), {
                    "description": DESCRIPTIONS[code],
                    "content": {"application/json": {"schema": ERROR_REF}}})
    return result
