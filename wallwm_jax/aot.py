"""Compile the train step ahead of time for a target topology and check it fits in memory.

    python -m wallwm_jax.aot --config experiments/pretrain.py:size=large --num_devices 256 \
        --config.batch_size=256 --config.mesh.data=1 --config.mesh.fsdp=-1 --device_kind "TPU v5p"
    python -m wallwm_jax.aot --config experiments/pretrain.py:size=large --topology v5p:4x4x4 \
        --config.batch_size=64 --config.mesh.data=1 --config.mesh.fsdp=-1

`--topology` compiles for TPU devices described by libtpu (`pip install .[tpu]`; no TPU
needed); without libtpu it falls back to as many fake CPU devices as the topology has chips.
`--num_devices N` compiles for N fake CPU devices. The model traces for the target: a TPU
`--device_kind`/`--topology` gives the bf16 program a TPU runs, even on fake CPU devices.
Params and optimizer state are abstract (jax.eval_shape): no weights are allocated. Prints a
table and one JSON line (also `--json_out`). The global batch must split over the devices.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import time
from typing import Any

from absl import flags
from ml_collections import config_flags

from wallwm_jax import cli

GIB = 1024**3


def topology_chips(topology: str) -> int:
    """Number of chips in a topology name such as 'v5p:4x4x4' or '2x2' (product of dims)."""
    dims = re.fullmatch(r"(?:[\w-]+:)?(\d+(?:x\d+)*)", topology.strip())
    if dims is None:
        raise ValueError(f"--topology='{topology}' should look like 'v5p:4x4x4' (kind:AxBxC)")
    return math.prod(int(d) for d in dims.group(1).split("x"))


def _set_fake_cpu_devices(n: int) -> None:
    """Must run before JAX is imported: N host-platform (CPU) devices."""
    flags_now = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                       os.environ.get("XLA_FLAGS", ""))
    os.environ["XLA_FLAGS"] = f"{flags_now} --xla_force_host_platform_device_count={n}".strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def memory_report(compiled: Any) -> dict[str, int]:
    """Per-device bytes from `compiled.memory_analysis()`; total counts donated (aliased)
    argument buffers once."""
    m = compiled.memory_analysis()
    out = {"arguments": int(m.argument_size_in_bytes), "outputs": int(m.output_size_in_bytes),
           "aliased": int(m.alias_size_in_bytes), "temporaries": int(m.temp_size_in_bytes),
           "generated_code": int(m.generated_code_size_in_bytes)}
    out["total"] = (out["arguments"] + out["outputs"] - out["aliased"] + out["temporaries"]
                    + out["generated_code"])
    return out


def xla_flops(compiled: Any) -> float | None:
    """FLOPs of the per-device program from XLA's `cost_analysis()` (None if unavailable)."""
    try:
        cost = compiled.cost_analysis()
    except NotImplementedError:
        return None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    return float(cost["flops"]) if cost and "flops" in cost else None


def compile_report(config: Any, devices: list[Any], *, hbm_gib: float | None = None,
                   device_kind: str | None = None, target: Any = None) -> dict[str, Any]:
    """Lower and compile `make_train_step(config, mesh).update_fn` over `devices`; report
    per-device memory, FLOPs (HLO matmuls with loop trip counts, XLA's, analytic), collective
    bytes and whether it fits the HBM budget. The model traces for `target` (a
    `layers.Target`; default: the devices'), e.g. bf16 for TPU on fake CPU devices."""
    import jax

    from wallwm_jax import hlo_stats, sharding, throughput
    from wallwm_jax.models import wallwm
    from wallwm_jax.models.layers import Target, compute_dtype, resolve_attention, target_devices

    jax.config.update("jax_threefry_partitionable", True)
    mesh = sharding.make_mesh(config.mesh, devices)
    device_kind = device_kind or devices[0].device_kind
    target = target or Target.of(devices[0])
    step = _train_step(config, mesh)
    t0 = time.perf_counter()
    with target_devices(target):
        lowered = step.update_fn.lower(*step.abstract_inputs)
    t1 = time.perf_counter()
    dtype = compute_dtype(config.model.dtype, target.platform)
    budget = hbm_gib if hbm_gib is not None else throughput.device_peak(device_kind)[1]
    analytic = throughput.step_flops(config)
    report = {
        "size": config.get("size", ""), "num_devices": len(devices),
        "compiled_for": devices[0].device_kind, "device_kind": device_kind,
        "mesh": dict(mesh.shape), "batch_size": int(config.batch_size),
        "params": wallwm.count_params(step.abstract_params),
        "remat_policy": config.model.remat_policy, "target": target.platform,
        "dtype": str(dtype), "attention": resolve_attention(
            config.model.get("attention", "auto"), dtype, int(config.model.head_dim),
            target.platform, target.device_kind, lowering=devices[0].platform),
        "scan_layers": bool(config.model.scan_layers),
        "lower_s": t1 - t0, "analytic_flops_per_step": analytic,
        "analytic_flops_per_device": analytic / len(devices), "hbm_budget_gib": budget,
    }
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        # The TPU compiler itself refuses a program that cannot fit its HBM.
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        report.update(compile_s=time.perf_counter() - t1, memory_bytes_per_device=None,
                      xla_flops_per_device=None, hlo_flops_per_device=None,
                      collective_bytes_per_device=None,
                      verdict=f"DOES NOT FIT (compiler: {str(e).splitlines()[0]})")
        return report
    stats = hlo_stats.compiled_stats(compiled)
    report.update(compile_s=time.perf_counter() - t1,
                  memory_bytes_per_device=memory_report(compiled),
                  xla_flops_per_device=xla_flops(compiled),
                  hlo_flops_per_device=stats.matmul_flops,
                  collective_bytes_per_device=stats.collective_bytes,
                  loops_with_unknown_trip_count=list(stats.unknown_trip_loops))
    report["verdict"] = verdict(report["memory_bytes_per_device"]["total"], budget)
    return report


def _train_step(config: Any, mesh: Any) -> Any:
    """`make_train_step` without its run inputs (seed, total steps as device arrays): libtpu's
    compile-only TPU devices hold no arrays, and lowering needs only their shapes."""
    from wallwm_jax import sharding, train_step

    rules = sharding.ShardingRules.from_config(config.sharding_rules)
    ways = rules.batch_divisor(mesh)
    if int(config.batch_size) % ways:
        raise cli.UserError(
            f"--config.batch_size={config.batch_size} does not split over the {ways} "
            f"data-parallel devices of mesh {dict(mesh.shape)}: use a multiple of {ways}")
    train_step.check_model_data(config)
    return train_step._build_train_step(config.copy_and_resolve_references(), mesh, rules,
                                        int(config.batch_size))


def verdict(total_bytes: int, budget_gib: float | None) -> str:
    """FITS / DOES NOT FIT: per-device total against the per-device HBM budget."""
    if budget_gib is None:
        return "UNKNOWN (no --hbm_gib and no HBM size known for this device kind)"
    return "FITS" if total_bytes <= budget_gib * GIB else "DOES NOT FIT"


def format_table(report: dict[str, Any]) -> str:
    """The report as a small Markdown table plus the verdict line."""
    mem = report["memory_bytes_per_device"] or {}
    rows = [(f"{name} (GiB/device)", f"{mem[name] / GIB:.3f}" if mem else "n/a")
            for name in ("arguments", "outputs", "aliased", "temporaries", "generated_code",
                         "total")]
    hlo, coll = report.get("hlo_flops_per_device"), report.get("collective_bytes_per_device")
    rows += [("compiled matmul FLOPs/device (HLO, loop trip counts applied)",
              "n/a" if hlo is None else f"{hlo:.4g}"),
             ("collective bytes/device (loop trip counts applied)",
              "n/a" if coll is None else f"{coll['total'] / GIB:.3f} GiB"),
             ("analytic FLOPs/device (used for MFU)",
              f"{report['analytic_flops_per_device']:.4g}"),
             ("analytic FLOPs/step", f"{report['analytic_flops_per_step']:.4g}"),
             ("params", f"{report['params'] / 1e6:,.1f} M"),
             ("compile (s)", f"{report['compile_s']:.1f}")]
    lines = [f"{report['size']} on {report['num_devices']} x {report['compiled_for']} "
             f"(budget from '{report['device_kind']}'), mesh {report['mesh']}, "
             f"batch {report['batch_size']}, compute {report['dtype']} for "
             f"{report['target']}, attention {report['attention']}", "",
             "| quantity | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    budget = report["hbm_budget_gib"]
    budget_txt = "no budget" if budget is None else f"budget {budget:g} GiB"
    total = f"{mem['total'] / GIB:.2f} GiB per device" if mem else "no memory analysis"
    lines += ["", f"{report['verdict']}: {total}, {budget_txt}"]
    return "\n".join(lines)


def _devices(topology: str | None) -> list[Any]:
    """The TPU devices libtpu describes for `topology` (no TPU needed), else JAX's devices."""
    import jax

    if topology and importlib.util.find_spec("libtpu") is not None:
        from jax.experimental import topologies

        return list(topologies.get_topology_desc(topology_name=topology, platform="tpu").devices)
    return list(jax.devices())


def main(argv: list[str]) -> None:
    """CLI: choose the target devices (before JAX starts), compile, print table + JSON."""
    cli.positional(argv)
    fl = flags.FLAGS
    config = cli.config_value("config")
    target_kind = fl.device_kind
    if fl.topology and importlib.util.find_spec("libtpu") is None:
        n = topology_chips(fl.topology)
        print(f"libtpu is not installed: compiling for {n} fake CPU devices instead of the "
              f"TPU topology '{fl.topology}' (memory is the CPU compiler's estimate)")
        _set_fake_cpu_devices(n)
        target_kind = target_kind or _tpu_kind(fl.topology)
    elif fl.num_devices:
        _set_fake_cpu_devices(fl.num_devices)
    devices = _devices(fl.topology)
    if devices[0].platform == "tpu":
        import jax

        # libtpu's compile-only client cannot load cached executables: JAX would warn and
        # compile anyway, so neither read nor write the persistent cache.
        jax.config.update("jax_enable_compilation_cache", False)
    target = None
    if "tpu" in (target_kind or "").lower() and devices[0].platform != "tpu":
        from wallwm_jax.models.layers import Target

        target = Target("tpu", target_kind)  # trace as the TPU would run it (bf16)
    report = compile_report(config, devices, hbm_gib=fl.hbm_gib, device_kind=target_kind,
                            target=target)
    print(format_table(report))
    print(json.dumps(report))
    if fl.json_out:
        with open(fl.json_out, "w") as f:
            json.dump(report, f, indent=2)


def _tpu_kind(topology: str) -> str:
    """'v5p:4x4x4' -> 'TPU v5p' (for the default HBM budget); '' when there is no kind."""
    return f"TPU {topology.split(':', 1)[0]}" if ":" in topology else ""


if __name__ == "__main__":
    config_flags.DEFINE_config_file(
        "config", None, "Experiment config, e.g. experiments/pretrain.py:size=large")
    flags.DEFINE_string("topology", None, "TPU topology such as v5p:4x4x4 (needs libtpu).")
    flags.DEFINE_integer("num_devices", None, "Compile for this many fake CPU devices.")
    flags.DEFINE_float("hbm_gib", None, "Per-device memory budget in GiB (default: by device "
                       "kind, e.g. 16 for TPU v5e, 95 for v5p, 80 for H100).")
    flags.DEFINE_string("device_kind", None, "Device kind the budget is for, e.g. 'TPU v5p' "
                        "or 'H100' (default: the compile devices' kind).")
    flags.DEFINE_string("json_out", None, "Also write the report to this JSON file.")
    flags.mark_flags_as_required(["config"])
    cli.run(main)
