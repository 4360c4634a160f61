"""Signing up, datasets and stake: an organization's own things."""

from decimal import Decimal

from django import forms

from ..models import Organization
from .common import MarketErrorMixin


# --- Accounts ------------------------------------------------------------------------
class SignupForm(MarketErrorMixin, forms.Form):
    MODE_CHOICES = [("create", "Create a new organization"),
                    ("join", "Join my team's organization with a join code")]

    username = forms.CharField(max_length=150)
    email = forms.EmailField(required=False)
    password = forms.CharField(widget=forms.PasswordInput(render_value=False),
                               help_text="At least 8 characters, not only digits.")
    password_again = forms.CharField(widget=forms.PasswordInput, label="Password, again")
    mode = forms.ChoiceField(choices=MODE_CHOICES, initial="create", widget=forms.RadioSelect,
                             label="Organization")
    organization_name = forms.CharField(max_length=120, required=False)
    kind = forms.ChoiceField(choices=Organization.Kind.choices, required=False,
                             widget=forms.RadioSelect, label="We want to",
                             initial=Organization.Kind.CONSUMER)
    sector = forms.ChoiceField(choices=Organization.Sector.choices, required=False,
                               initial=Organization.Sector.HEALTHCARE)
    join_code = forms.CharField(max_length=32, required=False,
                                help_text="An owner or admin finds it on the organization page.")

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("password") and cleaned.get("password") != cleaned.get("password_again"):
            self.add_error("password_again", "The two passwords differ.")
        if cleaned.get("mode") == "join":
            if not cleaned.get("join_code"):
                self.add_error("join_code", "Enter the join code a colleague gave you.")
        else:
            if not cleaned.get("organization_name"):
                self.add_error("organization_name", "Give your organization a name.")
            if not cleaned.get("kind"):
                self.add_error("kind", "Choose consumer or provider.")
        return cleaned



class DatasetUploadForm(MarketErrorMixin, forms.Form):
    file = forms.FileField(label="CSV file", help_text="UTF-8, comma-separated, with a header row.")
    name = forms.CharField(max_length=200, required=False, label="Name",
                           help_text="Defaults to the file name.")
    label_column = forms.CharField(
        max_length=128, required=False, label="Label column (classifiers)",
        help_text="Checked now: it exists, holds at least two classes, and every other column "
                  "is numeric. Leave empty for time series.")


class StakeForm(MarketErrorMixin, forms.Form):
    """Stake or request a withdrawal of stake; `request_id` (rendered with the form) makes a
    resubmitted form a no-op."""

    amount = forms.DecimalField(label="Amount (tUSD)", max_digits=20, decimal_places=6,
                                min_value=Decimal("0.000001"))
    request_id = forms.UUIDField(widget=forms.HiddenInput)


class StakeWithdrawForm(MarketErrorMixin, forms.Form):
    request_id = forms.UUIDField(widget=forms.HiddenInput)
