"""Collective traffic of a compiled program, read from its per-device HLO text."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

import numpy as np

COLLECTIVES = ("all-gather", "all-to-all", "collective-permute", "reduce-scatter", "all-reduce")
_DTYPE_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "pred": 1, "s8": 1, "u8": 1,
                "f64": 8, "s64": 8, "u64": 8}
_OP = re.compile(r"=\s*(.+?)\s+(" + "|".join(COLLECTIVES) + r")(-start|-done)?\(")
_ARRAY = re.compile(r"(\w+)\[([\d,]*)\]")


def collective_bytes(hlo: str) -> dict[str, int]:
    """Bytes of each collective kind: sum of its result shapes (async: the -done result),
    each op counted once."""
    out: dict[str, int] = defaultdict(int)
    for line in hlo.splitlines():
        m = _OP.search(line)
        if not m or m.group(3) == "-start":
            continue
        for dtype, dims in _ARRAY.findall(m.group(1)):
            n = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
            out[m.group(2)] += n * _DTYPE_BYTES.get(dtype, 4)
    return dict(out)


def compiled_collective_bytes(compiled: Any) -> dict[str, int]:
    """`collective_bytes` of a `jax.stages.Compiled`, plus the 'total'."""
    by_kind = collective_bytes(compiled.as_text())
    return {**by_kind, "total": sum(by_kind.values())}
