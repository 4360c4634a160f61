"""Who may call what. Object scoping is not done here: every view's queryset is already
scoped to the caller by a selector (DRF object permissions do not filter lists)."""

from rest_framework.permissions import SAFE_METHODS, BasePermission

from ..selectors.accounts import require_consumer, require_provider


class IsProvider(BasePermission):
    """A member of a provider organization that is not suspended. Anonymous callers get
    401 (False lets DRF ask for credentials); others get 403 with the selector's reason."""

    def has_permission(self, request, view) -> bool:
        if not request.user.is_authenticated:
            return False
        require_provider(request.user)
        return True


class IsConsumer(BasePermission):
    def has_permission(self, request, view) -> bool:
        if not request.user.is_authenticated:
            return False
        require_consumer(request.user)
        return True


class ReadOnly(BasePermission):
    def has_permission(self, request, view) -> bool:
        return request.method in SAFE_METHODS
