"""The nuisance-parameter search space: Hydra's sweep syntax -> Optuna distributions, and back to overrides.

interval(a, b)                  float, uniform in [a, b]
tag(log, interval(a, b))        float, log-uniform in [a, b]
tag(int, interval(a, b))        integer in [a, b] (tag(int, log, interval(a, b)): log-uniform integer)
range(a, b, step)               integers (or floats) a, a + step, ... < b (Hydra's range: b is excluded)
choice(x, y, z) or x,y,z        categorical
a single value                  fixed (every trial gets it)
"""

from __future__ import annotations

import math
import re
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from sweep.config import ConfigError

_SIMPLE = re.compile(r"^[A-Za-z_][\w.\-]*$")


def parse_search_space(search: dict[str, Any] | None) -> dict[str, BaseDistribution | Any]:
    """{key: distribution or fixed value}, in the order given. Raises ConfigError naming the bad entry."""
    parser = OverridesParser.create()
    space: dict[str, BaseDistribution | Any] = {}
    for key, spec in (search or {}).items():
        text = f"{key}={spec}"
        try:
            override = parser.parse_override(text)
        except Exception as exc:
            raise ConfigError(f"invalid search space: {text}: {exc}".splitlines()[0]) from None
        try:
            space[key] = to_distribution(override)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"invalid search space: {text}: {exc}") from None
    return space


def to_distribution(override: Override) -> BaseDistribution | Any:
    if not override.is_sweep_override():
        return override.value()
    value = override.value()
    if isinstance(value, ChoiceSweep):
        choices = list(value.list)
        for c in choices:
            if not (c is None or isinstance(c, (bool, int, float, str))):
                raise ValueError(f"choice values must be numbers, strings, booleans or null, not {c!r}")
        return CategoricalDistribution(choices)
    if isinstance(value, RangeSweep):
        start, stop, step = value.start, value.stop, value.step
        assert start is not None and stop is not None
        if step <= 0:
            raise ValueError("range() needs a positive step")
        n = math.ceil((stop - start) / step)  # Hydra's range excludes `stop`
        if n < 1:
            raise ValueError("range() is empty")
        if all(isinstance(x, int) for x in (start, stop, step)):
            return IntDistribution(int(start), int(start + (n - 1) * step), step=int(step))
        return FloatDistribution(float(start), float(start + (n - 1) * step), step=float(step))
    if isinstance(value, IntervalSweep):
        assert value.start is not None and value.end is not None
        low, high = value.start, value.end
        unknown = set(value.tags) - {"log", "int"}
        if unknown:
            raise ValueError(f"unknown tag(s) {sorted(unknown)}: allowed tags are log, int")
        if not low < high:
            raise ValueError("interval(a, b) needs a < b")
        log = "log" in value.tags
        if log and low <= 0:
            raise ValueError("tag(log, interval(a, b)) needs a > 0")
        if "int" in value.tags:
            return IntDistribution(math.ceil(low), math.floor(high), log=log)
        return FloatDistribution(float(low), float(high), log=log)
    raise ValueError("use interval(...), tag(log, interval(...)), range(...) or choice(...)")


def extremes(dist: BaseDistribution | Any) -> list[Any]:
    """The values worth validating before a sweep starts: both ends of a range, every choice."""
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, (FloatDistribution, IntDistribution)):
        return [dist.low, dist.high]
    return [dist]


def describe(search: dict[str, Any] | None) -> dict[str, str]:
    return {str(k): str(v) for k, v in (search or {}).items()}


def format_value(value: Any) -> str:
    """A value as Hydra override text that parses back to the same value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return {True: "nan"}.get(math.isnan(value), "inf" if value > 0 else "-inf")
        return repr(value)
    if isinstance(value, int):
        return str(value)
    return quote(str(value))


def quote(text: str) -> str:
    """A string as one quoted Hydra override value (kept as is by the parser, `=` and `,` included)."""
    if _SIMPLE.match(text) and text.lower() not in ("null", "true", "false", "nan", "inf"):
        return text
    return "'" + text.replace("'", "\\'") + "'"
