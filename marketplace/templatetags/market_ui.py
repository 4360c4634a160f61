"""Presentation helpers for the HTML pages: money and units, local times, status tones."""

from datetime import datetime
from decimal import Decimal

from django import template
from django.utils.html import format_html

from .. import catalogue
from ..money import amount as money_amount

register = template.Library()

BLOC_NAMES = {
    "EU": "European Union", "UK": "United Kingdom", "CH": "Switzerland", "NO": "Norway",
    "US": "United States", "AP": "Asia-Pacific", "SA": "South America",
}

JOB_TONES = {
    "draft": "neutral", "submitted": "info", "funded": "info", "matching": "info",
    "running": "accent", "interrupted": "warn", "paused": "warn", "verifying": "accent", "completed": "ok",
    "settled": "ok", "cancelled": "neutral", "failed": "bad", "refunded": "neutral",
}
NODE_TONES = {"online": "ok", "offline": "neutral", "pending": "warn", "suspended": "bad",
              "active": "ok", "paused": "neutral"}


@register.filter
def money(value) -> str:
    """1.850000 -> "1.85"; 0.123456 -> "0.123456" (at least 2, at most 6 decimals)."""
    return money_amount(value)


@register.filter
def hours(value) -> str:
    if value is None:
        return "—"
    d = Decimal(value).normalize()
    return f"{d:f}"


@register.filter
def pct(value) -> str:
    """A share (0.9850) as a percentage ("98.5 %")."""
    if value is None:
        return "new"
    p = (Decimal(value) * 100).quantize(Decimal("0.1")).normalize()
    return f"{p:f} %"


@register.filter
def region_name(code: str) -> str:
    if code in catalogue.REGIONS:
        return catalogue.REGIONS[code]
    return BLOC_NAMES.get(code, code)


@register.filter
def tag_label(tag: str) -> str:
    return catalogue.COMPLIANCE_TAGS.get(tag, tag)


@register.filter
def job_tone(status: str) -> str:
    return JOB_TONES.get(status, "neutral")


@register.filter
def status_tone(status: str) -> str:
    return NODE_TONES.get(status, "neutral")


@register.filter
def gpu_label(model: str) -> str:
    return "CPU slots" if model == catalogue.CPU else model


@register.filter
def sync_label(sync: dict | None) -> str:
    """A job's synchronisation settings in a few words."""
    if not sync or sync.get("mode") != "diloco":
        return "DDP: gradients all-reduced every step"
    return (f"DiLoCo: every {sync['inner_steps']} steps, {sync['precision']} pseudo-gradients, "
            f"outer Nesterov (lr {sync['outer_lr']}, momentum {sync['outer_momentum']})")


@register.filter
def data_size(value) -> str:
    """Bytes in SI units: 1 234 567 -> "1.23 MB"."""
    if value is None:
        return "—"
    size = float(value)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.3g} {unit}"
        size /= 1000
    return f"{size:.3g} TB"


@register.simple_tag
def traffic_saved(sent, ddp) -> str:
    """What the job's rank-0 node sent to the other nodes, against what DDP would have sent
    for the same steps (static/js/job_live.js writes the same sentence)."""
    if sent is None or not ddp:
        return ""
    if sent >= ddp:
        return f"{data_size(sent)} sent to the other nodes (DDP)."
    factor = ddp / sent if sent else float("inf")
    ratio = "∞" if factor == float("inf") else f"{factor:,.0f}" if factor >= 10 else f"{factor:.1f}"
    return f"{data_size(sent)} sent to the other nodes; DDP would have sent {data_size(ddp)}: {ratio}× less."


@register.simple_tag
def localtime(value: datetime | None, empty: str = "—"):
    """A UTC instant in a <time> element; static/js/app.js shows it in the browser's zone."""
    if value is None:
        return empty
    return format_html('<time datetime="{}" data-local>{} UTC</time>',
                       value.isoformat(), value.strftime("%Y-%m-%d %H:%M"))


@register.filter
def lookup(mapping, key) -> str:
    """mapping[key] in a template ("" when absent), e.g. an address's label."""
    return mapping.get(key, "") if isinstance(mapping, dict) else ""
