"""The one domain error type. A single DRF exception handler and the HTML forms turn it
into a 4xx with a message; `field` names the input at fault when there is one."""


class MarketError(Exception):
    status_code = 400

    def __init__(self, message: str, *, field: str | None = None, code: str = "invalid"):
        super().__init__(message)
        self.message = message
        self.field = field
        self.code = code
        # Every problem found, as (field, message); the first is `field`/`message`. A service
        # that checks several inputs reports them all at once (`invalid_all`), so a form shows
        # each next to its field instead of one per submission.
        self.errors: list[tuple[str | None, str]] = [(field, message)]


def invalid_all(problems: list[tuple[str | None, str]]) -> None:
    """Raise one MarketError carrying every (field, message) problem; nothing when none."""
    if problems:
        exc = MarketError(problems[0][1], field=problems[0][0])
        exc.errors = list(problems)
        raise exc


class NotFound(MarketError):
    status_code = 404

    def __init__(self, message: str = "Not found."):
        super().__init__(message, code="not_found")


class PermissionDenied(MarketError):
    status_code = 403

    def __init__(self, message: str = "You may not do that."):
        super().__init__(message, code="permission_denied")


class Conflict(MarketError):
    status_code = 409

    def __init__(self, message: str, *, code: str = "conflict"):
        super().__init__(message, code=code)


class Unauthorized(MarketError):
    status_code = 401

    def __init__(self, message: str = "Authentication required."):
        super().__init__(message, code="unauthorized")
