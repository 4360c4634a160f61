"""What the HTML forms share: market errors shown at their field, local date-times in
the browser's time zone, region choices."""

from datetime import UTC, datetime, timedelta

from django import forms

from .. import catalogue
from ..errors import MarketError
from ..templatetags.market_ui import BLOC_NAMES

LOCAL_DT_FORMAT = "%Y-%m-%dT%H:%M"


def region_choices(*, blank: str | None = None, blocs: bool = True) -> list:
    choices: list = [("", blank)] if blank is not None else []
    if blocs:
        choices.append(("Blocs", [(b, f"{b} — {BLOC_NAMES.get(b, b)}")
                                  for b in catalogue.REGION_BLOCS]))
    choices.append(("Countries and states",
                    [(code, f"{code} — {name}") for code, name in sorted(catalogue.REGIONS.items())]))
    return choices


GPU_CHOICES = [(m, f"{m} ({mem} GB)") for m, mem in catalogue.GPU_MODELS.items()
               if m != catalogue.CPU] + [(catalogue.CPU, "CPU slots (no GPU)")]
COMPLIANCE_CHOICES = list(catalogue.COMPLIANCE_TAGS.items())


class MarketErrorMixin:
    """Attach a service's MarketError to the field it names, else to the whole form."""

    def add_market_error(self, exc: MarketError) -> None:
        for field, message in exc.errors:  # all of them at once, each on its own field
            name = (field or "").split(".")[0]
            self.add_error(name if name in self.fields else None, message)  # type: ignore[attr-defined]


class LocalDateTimeInput(forms.DateTimeInput):
    input_type = "datetime-local"

    def __init__(self, attrs=None):
        super().__init__(attrs=attrs, format=LOCAL_DT_FORMAT)


class LocalDateTimeField(forms.DateTimeField):
    """A datetime-local value: wall-clock time in the browser's zone. The form turns it
    into UTC with the hidden `tz_offset` (minutes, as JS getTimezoneOffset gives)."""

    widget = LocalDateTimeInput

    def __init__(self, **kwargs):
        kwargs.setdefault("input_formats", [LOCAL_DT_FORMAT, "%Y-%m-%dT%H:%M:%S"])
        super().__init__(**kwargs)


class LocalTimeFormMixin:
    local_time_fields: tuple[str, ...] = ()

    def clean(self):
        cleaned = super().clean()  # type: ignore[misc]
        offset = cleaned.get("tz_offset") or 0
        for name in self.local_time_fields:
            value = cleaned.get(name)
            if value is not None:
                wall = value.replace(tzinfo=None)
                cleaned[name] = (wall + timedelta(minutes=offset)).replace(tzinfo=UTC)
        return cleaned


def utc_to_input(value: datetime) -> str:
    return value.astimezone(UTC).strftime(LOCAL_DT_FORMAT)


def tz_offset_field() -> forms.IntegerField:
    return forms.IntegerField(required=False, min_value=-14 * 60, max_value=14 * 60,
                              widget=forms.HiddenInput(attrs={"data-tz-offset": ""}))
