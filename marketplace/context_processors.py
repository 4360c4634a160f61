from .services.wallets import payout_change_pending


def membership(request):
    """The signed-in user's organization, for the navigation bar."""
    user = getattr(request, "user", None)
    org = None
    if user is not None and user.is_authenticated:
        member = getattr(user, "membership", None)
        org = member.organization if member else None
    # A pending change of payout wallet is announced on every page its members see, so that
    # one nobody in the organization meant to make is noticed before it takes effect.
    change = payout_change_pending(org) if org is not None and org.is_provider else None
    return {"current_org": org, "payout_change": change}
