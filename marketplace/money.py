"""Money in one place. Amounts are `Decimal` tUSD with the settlement token's 6 decimal
places; the chain counts integer base units (micro-tUSD). A leaf: imports only `errors`.

Rounding is part of the rule it serves, so it is named where money is rounded:
`round_down` for what is owed (never charge more than was metered), `round_half_up` for
estimates; `to_units` refuses an amount the token cannot hold rather than round it.
"""

from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal, InvalidOperation

from .errors import MarketError

TOKEN_DECIMALS = 6
UNITS_PER_TUSD = 10**TOKEN_DECIMALS
MICRO = Decimal(1).scaleb(-TOKEN_DECIMALS)  # 0.000001 tUSD, the smallest amount
CENT = Decimal("0.01")
EMPTY = "—"


def to_units(amount: Decimal) -> int:
    """tUSD (Decimal, 6 places) to the token's integer base units, at the chain boundary."""
    units = Decimal(amount) * UNITS_PER_TUSD
    if units != units.to_integral_value():
        raise MarketError(f"{amount} has more than {TOKEN_DECIMALS} decimal places.")
    return int(units)


def from_units(units: int) -> Decimal:
    """The token's integer base units to tUSD, exactly (6 places)."""
    return (Decimal(units) / UNITS_PER_TUSD).quantize(MICRO)


def round_down(value: Decimal | int | float | str) -> Decimal:
    """To 6 places, rounded down: what is owed (never more than was metered)."""
    return Decimal(value).quantize(MICRO, rounding=ROUND_DOWN)


def round_half_up(value: Decimal) -> Decimal:
    """To 6 places, rounded half up: estimates and quotes."""
    return value.quantize(MICRO, rounding=ROUND_HALF_UP)


def is_whole_micro(value: Decimal) -> bool:
    """Whether the token can hold `value` exactly (at most 6 decimal places)."""
    return value == value.quantize(MICRO)


def amount(value: Decimal | int | str | None) -> str:
    """The one display rule for tUSD amounts: thousands separated, at least 2 and at most
    6 decimals (1.850000 → "1.85", 0.123456 → "0.123456", 1000 → "1,000.00"); "—" for
    none; a value that is not a number is shown as it is."""
    if value is None or value == "":
        return EMPTY
    try:
        d = Decimal(value)
    except (InvalidOperation, TypeError, ValueError):
        return str(value)
    d = d.quantize(MICRO).normalize()
    exponent = d.as_tuple().exponent
    if isinstance(exponent, int) and exponent > -2:
        d = d.quantize(CENT)
    return f"{d:,f}"


def tusd(value: Decimal | None, unit: str = "tUSD") -> str:
    """An amount with its unit ("1.85 tUSD"), by the rule of `amount`; "—" for none."""
    if value is None:
        return EMPTY
    return f"{amount(value)} {unit}"


def exact(value: Decimal | int | str | None) -> str:
    """An amount for machines (CSV statements): all 6 decimals, no separators
    ("1000.000000"); empty for none."""
    if value is None or value == "":
        return ""
    return f"{Decimal(value).quantize(MICRO):f}"
