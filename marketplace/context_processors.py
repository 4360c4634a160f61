def membership(request):
    """The signed-in user's organization, for the navigation bar."""
    user = getattr(request, "user", None)
    org = None
    if user is not None and user.is_authenticated:
        member = getattr(user, "membership", None)
        org = member.organization if member else None
    return {"current_org": org}
