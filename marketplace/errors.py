"""The one domain error type. A single DRF exception handler and the HTML forms turn it
into a 4xx with a message; `field` names the input at fault when there is one."""


class MarketError(Exception):
    status_code = 400

    def __init__(self, message: str, *, field: str | None = None, code: str = "invalid"):
        super().__init__(message)
        self.message = message
        self.field = field
        self.code = code


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
