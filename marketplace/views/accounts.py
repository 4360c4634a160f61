from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from ..errors import MarketError
from ..forms import SignupForm
from ..models import Membership
from ..selectors.accounts import organization_of
from ..services.accounts import organization_rotate_join_code, user_signup


def signup(request):
    if request.user.is_authenticated:
        return redirect("home")
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        c = form.cleaned_data
        joining = c["mode"] == "join"
        try:
            user = user_signup(
                username=c["username"], email=c.get("email") or "", password=c["password"],
                organization_name="" if joining else c["organization_name"],
                kind="" if joining else c["kind"], sector=c.get("sector") or "other",
                join_code=c["join_code"] if joining else "",
            )
        except MarketError as exc:
            form.add_market_error(exc)
        else:
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            org = organization_of(user)
            messages.success(request, f"Welcome to ComputeMesh. You are a member of {org}.")
            if org is not None and org.is_provider:
                return redirect("provider_nodes")
            return redirect("offers")
    return render(request, "accounts/signup.html", {"form": form})


@login_required
def organization(request):
    org = organization_of(request.user)
    if org is None:
        return render(request, "accounts/no_org.html")
    member = request.user.membership
    can_manage = member.role in (Membership.Role.OWNER, Membership.Role.ADMIN)
    members = org.memberships.select_related("user").order_by("created_at")
    return render(request, "accounts/organization.html", {
        "org": org, "members": members, "can_manage": can_manage, "me": member,
    })


@login_required
@require_POST
def organization_rotate_code(request):
    org = organization_of(request.user)
    if org is None:
        return redirect("organization")
    try:
        organization_rotate_join_code(organization=org, actor=request.user)
    except MarketError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, "New join code created; the old one no longer works.")
    return redirect("organization")
