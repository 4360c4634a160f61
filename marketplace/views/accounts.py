from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from ..errors import MarketError
from ..forms import SignupForm
from ..models import Membership
from ..selectors.accounts import organization_of
from ..services import login_throttle
from ..services.accounts import organization_rotate_join_code, user_signup


class ThrottledAuthenticationForm(AuthenticationForm):
    """The sign-in form, under the token endpoint's throttle (services/login_throttle.py)."""

    throttled = False

    def clean(self):
        username = self.cleaned_data.get("username") or ""
        address = login_throttle.client_address(self.request)
        if wait := login_throttle.login_wait(username=username, address=address):
            self.throttled = True
            raise ValidationError(login_throttle.wait_message(wait), code="throttled")
        try:
            data = super().clean()
        except ValidationError:
            login_throttle.login_failed(username=username, address=address)
            raise
        login_throttle.login_succeeded(username=username)
        return data


class LoginView(auth_views.LoginView):
    form_class = ThrottledAuthenticationForm
    template_name = "accounts/login.html"
    redirect_authenticated_user = True

    def form_invalid(self, form):
        response = super().form_invalid(form)
        if form.throttled:  # the page says why; scripts see the status
            response.status_code = 429
        return response


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
