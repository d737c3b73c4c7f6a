"""The `key=value,...` switches a config file's `get_config(arg)` takes.

One parser for every config file (`experiments/pretrain.py:size=small,mode=event`), so each
accepts the same syntax and a bad switch is refused with the same message: the item, the key
or value at fault, and what was expected.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

_TRUE = ("1", "true", "yes")
_FALSE = ("0", "false", "no", "")


def _typed(key: str, value: str, default: Any) -> Any:
    """`value` as the type of `default` (bool, int, float or str)."""
    if isinstance(default, bool):  # before int: a bool is an int
        if value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
        expected = "a bool (1/0, true/false, yes/no)"
    elif isinstance(default, int):
        try:
            return int(value)
        except ValueError:
            expected = "an integer"
    elif isinstance(default, float):
        try:
            return float(value)
        except ValueError:
            expected = "a number"
    else:
        return value
    raise ValueError(f"config arg {key}={value!r}: expected {expected}")


def parse_config_arg(arg: str | None, defaults: Mapping[str, Any],
                     choices: Mapping[str, Collection[str]] | None = None) -> dict[str, Any]:
    """The switches of `arg` ("size=small,mode=event") over `defaults`.

    Every key must be one of `defaults`' and each value takes the type of its default (a bool
    accepts 1/0, true/false, yes/no). A key in `choices` must take one of its listed values.
    Empty items are skipped and a repeated key keeps its last value. Raises ValueError naming
    the item, the unknown key or the bad value, and what was expected.
    """
    out = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"config arg {item!r}: expected key=value with key in "
                             f"{sorted(defaults)}")
        if key not in defaults:
            raise ValueError(f"config arg {item!r}: unknown key {key!r}; expected key=value "
                             f"with key in {sorted(defaults)}")
        out[key] = _typed(key, value, defaults[key])
    for key, allowed in (choices or {}).items():
        if out[key] not in allowed:
            raise ValueError(f"config arg {key}={out[key]!r} is not one of {sorted(allowed)}")
    return out
