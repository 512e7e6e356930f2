"""Argument checks shared by meters, models, data modules and callbacks: errors name the argument."""

from __future__ import annotations

import math


class UserInputError(ValueError):
    """The user's input (an argument, a config value, a file they pointed at) is wrong.

    The commands print its message on one line and exit with status 2, with no traceback.
    """


def check_int(name: str, value: object, minimum: int) -> int:
    """``value`` if it is an integer (not a bool) >= ``minimum``; else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_number(
    name: str,
    value: object,
    *,
    minimum: float | None = None,
    above: float | None = None,
    maximum: float | None = None,
    unit: str = "",
    why: str = "",
) -> float:
    """``value`` as a float if it is a finite real number (not a bool, NaN or infinity) within range.

    ``minimum`` and ``maximum`` are inclusive, ``above`` exclusive; ``why`` (appended after the
    value) says where a bound comes from. Raises ``ValueError`` naming ``name`` and the allowed
    values, on one line.
    """
    bounds = []
    if minimum is not None:
        bounds.append(f">= {minimum:g}")
    if above is not None:
        bounds.append(f"> {above:g}")
    if maximum is not None:
        bounds.append(f"<= {maximum:g}")
    allowed = (
        "a finite number" + (f" {' and '.join(bounds)}" if bounds else "") + (f" ({unit})" if unit else "")
    )
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (minimum is None or value >= minimum)
        and (above is None or value > above)
        and (maximum is None or value <= maximum)
    )
    if not ok:
        raise ValueError(f"{name} must be {allowed}, got {value!r}" + (f"; {why}" if why else ""))
    return float(value)  # type: ignore[arg-type]


def check_bool(name: str, value: object) -> bool:
    """``value`` if it is ``True`` or ``False``; else ``ValueError`` naming ``name``."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value
