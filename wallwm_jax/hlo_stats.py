"""Collective bytes and matmul FLOPs of a compiled program, read from its per-device HLO text.

Loop-aware: an op inside a while body (a `lax.scan` over layers, a `fori_loop`) counts once per
iteration (XLA's `known_trip_count`), so `scan_layers` on and off give the same totals. The
one counter behind the tests, the benchmarks and `wallwm_jax.aot`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import defaultdict
from typing import Any

import numpy as np

COLLECTIVES = ("all-gather", "all-to-all", "collective-permute", "reduce-scatter", "all-reduce")
_DTYPE_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "pred": 1, "s8": 1, "u8": 1,
                "f64": 8, "s64": 8, "u64": 8, "s16": 2, "u16": 2, "f8e4m3fn": 1, "f8e5m2": 1}
_COMPUTATION = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\((.*)\)\s*->.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+([\w\-]+)\((.*)$")
_PARAM = re.compile(r"%?([\w.\-]+):\s*(\w+\[[\d,]*\])")
_ARRAY = re.compile(r"(\w+)\[([\d,]*)\]")
_CALLED = re.compile(r"\b(calls|to_apply|body|condition|true_computation|false_computation"
                     r"|branch_computations)=(\{[^}]*\}|%?[\w.\-]+)")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_OPERANDS = re.compile(r"%([\w.\-]+)")


def _dims(shape: str) -> tuple[str, list[int]]:
    m = _ARRAY.search(shape)
    if m is None:
        return "", []
    return m.group(1), [int(d) for d in m.group(2).split(",") if d]


def _array_bytes(shape: str) -> int:
    return sum(math.prod(int(d) for d in dims.split(",") if d) * _DTYPE_BYTES.get(dtype, 4)
               for dtype, dims in _ARRAY.findall(shape))


@dataclasses.dataclass
class _Computation:
    shapes: dict[str, str]  # instruction / parameter name -> result shape text
    lines: list[tuple[str, str, str, str]]  # (name, shape, opcode, rest of line)


def _parse(hlo: str) -> tuple[dict[str, _Computation], str | None]:
    comps: dict[str, _Computation] = {}
    entry, current = None, None
    for line in hlo.splitlines():
        head = _COMPUTATION.match(line)
        if head:
            current = _Computation(dict(_PARAM.findall(head.group(3))), [])
            comps[head.group(2)] = current
            if head.group(1):
                entry = head.group(2)
            continue
        instr = _INSTR.match(line) if current is not None else None
        if instr:
            name, shape, opcode, rest = instr.groups()
            current.shapes[name] = shape
            current.lines.append((name, shape, opcode, rest))
    return comps, entry


def _multipliers(comps: dict[str, _Computation], entry: str | None) -> tuple[dict[str, int],
                                                                             list[str]]:
    """How many times each computation runs per program run: while bodies x trip count.
    Also the names of while loops whose trip count XLA did not know (counted once)."""
    mult: dict[str, int] = defaultdict(int)
    unknown: list[str] = []
    roots = [entry] if entry else list(comps)
    stack = [(r, 1) for r in roots]
    while stack:
        name, m = stack.pop()
        mult[name] += m
        for instr, _, opcode, rest in comps.get(name, _Computation({}, [])).lines:
            trip = 1
            if opcode == "while":
                found = _TRIP.search(rest)
                cond = re.search(r"condition=%?([\w.\-]+)", rest)
                trip = (int(found.group(1)) if found
                        else _trip_from_condition(comps, cond.group(1) if cond else ""))
                if trip is None:
                    unknown.append(instr)
                    trip = 1
            for kind, target in _CALLED.findall(rest):
                if kind == "to_apply" and opcode != "call":
                    continue  # scalar reducers of reduce/all-reduce/sort: no matmuls, no bytes
                for callee in re.findall(r"[\w.\-]+", target.lstrip("%")):
                    if callee in comps:
                        stack.append((callee, m * (trip if kind in ("body", "condition")
                                                   else 1)))
    return dict(mult), unknown


def _trip_from_condition(comps: dict[str, _Computation], name: str) -> int | None:
    """Trip count of a `lax.scan`/`fori_loop`-shaped loop whose backend gives none (TPU): the
    condition is `counter < N` with N a constant (the counter starts at 0, steps by 1)."""
    comp = comps.get(name)
    if comp is None:
        return None
    constants = {n: re.match(r"\s*(-?\d+)\)", rest) for n, _, op, rest in comp.lines
                 if op == "constant"}
    for _, _, opcode, rest in comp.lines:
        if opcode == "compare" and "direction=LT" in rest:
            operands = _OPERANDS.findall(rest.split(")", 1)[0])
            if len(operands) == 2 and constants.get(operands[1]):
                return int(constants[operands[1]].group(1))
    return None


def _matmul_flops(comp: _Computation, shape: str, opcode: str, rest: str) -> float:
    _, out = _dims(shape)
    operands = _OPERANDS.findall(rest.split(")", 1)[0])
    if opcode == "dot" and operands:
        _, lhs = _dims(comp.shapes.get(operands[0], ""))
        found = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest)
        contract = [int(d) for d in found.group(1).split(",") if d] if found else []
        return 2.0 * math.prod(out) * math.prod(lhs[d] for d in contract if d < len(lhs))
    if opcode == "convolution" and len(operands) > 1:
        return _conv_flops(comp, out, operands, rest)
    return 0.0


def _window(rest: str, key: str, n: int, default: int) -> list[int]:
    found = re.search(rf"\b{key}=([\dx_\-]+)", rest.split("window={", 1)[-1].split("}", 1)[0])
    if found is None:
        return [default] * n
    return [int(v) for v in found.group(1).split("x")]


def _conv_flops(comp: _Computation, out: list[int], operands: list[str], rest: str) -> float:
    """2 x output batch x output features x input features per group x, per spatial
    dimension, the kernel taps that land on real input (not padding or a dilation hole):
    TPU writes batched matmuls as convolutions whose batch dims are padded, dilated windows."""
    _, lhs = _dims(comp.shapes.get(operands[0], ""))
    _, kernel = _dims(comp.shapes.get(operands[1], ""))
    labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", rest)
    if not lhs or not kernel or labels is None:
        return 0.0
    lhs_l, ker_l, out_l = labels.groups()
    spatial = sorted(c for c in ker_l if c.isdigit())  # window dims are in this order
    n = len(spatial)
    size = _window(rest, "size", n, 1)
    stride, lhs_dil, rhs_dil = (_window(rest, k, n, 1)
                                for k in ("stride", "lhs_dilate", "rhs_dilate"))
    pads = re.search(r"\bpad=([\d_x\-]+)", rest)
    lows = [int(p.split("_")[0]) for p in pads.group(1).split("x")] if pads else [0] * n
    taps = 1.0
    for d, c in enumerate(spatial):
        size_in, size_out = lhs[lhs_l.index(c)], out[out_l.index(c)]
        o = np.arange(size_out)[:, None]
        k = np.arange(size[d])[None, :]
        pos = o * stride[d] + k * rhs_dil[d] - lows[d]
        hit = (pos >= 0) & (pos <= (size_in - 1) * lhs_dil[d]) & (pos % lhs_dil[d] == 0)
        taps *= float(hit.sum())
    batch = math.prod(out[i] for i, c in enumerate(out_l) if c == "b")
    features = math.prod(out[i] for i, c in enumerate(out_l) if c == "f")
    fan_in = math.prod(kernel[i] for i, c in enumerate(ker_l) if c == "i")
    return 2.0 * batch * features * fan_in * taps


@dataclasses.dataclass(frozen=True)
class HloStats:
    """Per-device totals of one run of a compiled program, loop trip counts applied."""

    collective_bytes: dict[str, int]  # by collective kind, plus "total"
    matmul_flops: float  # dot + convolution FLOPs (2 per multiply-add)
    unknown_trip_loops: tuple[str, ...]  # while loops counted once (trip count unknown)


def hlo_stats(hlo: str) -> HloStats:
    """Collective bytes (sum of result shapes; async ops by their -done result) and matmul
    FLOPs of the per-device HLO text, each op times the runs of its computation."""
    comps, entry = _parse(hlo)
    mult, unknown = _multipliers(comps, entry)
    by_kind: dict[str, int] = defaultdict(int)
    flops = 0.0
    for name, comp in comps.items():
        m = mult.get(name, 0)
        if not m:
            continue
        for _, shape, opcode, rest in comp.lines:
            base = opcode.removesuffix("-done").removesuffix("-start")
            if base in COLLECTIVES and not opcode.endswith("-start"):
                by_kind[base] += m * _array_bytes(shape)
            elif opcode in ("dot", "convolution"):
                flops += m * _matmul_flops(comp, shape, opcode, rest)
    return HloStats({**by_kind, "total": sum(by_kind.values())}, flops, tuple(unknown))


def collective_bytes(hlo: str) -> dict[str, int]:
    """Bytes of each collective kind per program run (loop trip counts applied), no total."""
    return {k: v for k, v in hlo_stats(hlo).collective_bytes.items() if k != "total"}


def compiled_stats(compiled: Any) -> HloStats:
    """`hlo_stats` of a `jax.stages.Compiled`."""
    return hlo_stats(compiled.as_text())


def compiled_collective_bytes(compiled: Any) -> dict[str, int]:
    """`collective_bytes` of a `jax.stages.Compiled`, plus the 'total'."""
    return compiled_stats(compiled).collective_bytes
