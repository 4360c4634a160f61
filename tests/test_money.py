"""marketplace.money: the one place for tUSD amounts (conversions at the chain boundary, the
display rule that the pages and the admin share)."""

from decimal import Decimal

import pytest

from marketplace import money
from marketplace.errors import MarketError


def test_units_round_trip_at_the_token_s_six_places():
    assert money.to_units(Decimal("1.85")) == 1_850_000
    assert money.from_units(1_850_000) == Decimal("1.85")
    assert str(money.from_units(5_000_000)) == "5.000000"
    assert money.to_units(money.from_units(123_456_789)) == 123_456_789


def test_to_units_refuses_what_the_token_cannot_hold():
    with pytest.raises(MarketError, match="more than 6 decimal places"):
        money.to_units(Decimal("0.0000001"))


def test_rounding_rules_are_named_by_purpose():
    assert money.round_down(Decimal("0.0000019")) == Decimal("0.000001")
    assert money.round_half_up(Decimal("0.0000015")) == Decimal("0.000002")
    assert money.is_whole_micro(Decimal("0.000001"))
    assert not money.is_whole_micro(Decimal("0.0000001"))


@pytest.mark.parametrize("value, shown", [
    (Decimal("1.850000"), "1.85"),
    (Decimal("0.123456"), "0.123456"),
    (Decimal("1000"), "1,000.00"),
    (Decimal("-3.5"), "-3.50"),
    ("12.3", "12.30"),
    (None, "—"),
    ("", "—"),
    ("n/a", "n/a"),
])
def test_one_display_rule(value, shown):
    assert money.amount(value) == shown


def test_tusd_adds_the_unit_and_the_template_filter_and_admin_agree():
    from marketplace.admin import money as admin_money
    from marketplace.templatetags.market_ui import money as filter_money

    assert money.tusd(Decimal("1234.5")) == "1,234.50 tUSD"
    assert money.tusd(None) == "—"
    assert admin_money(Decimal("0.123456")) == "0.123456 tUSD"
    assert filter_money(Decimal("0.123456")) == "0.123456"
