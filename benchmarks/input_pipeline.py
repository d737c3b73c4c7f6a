"""Input-pipeline throughput vs what the train step consumes, measured in the same run.

    python benchmarks/input_pipeline.py                      # builds a small demo dataset
    python benchmarks/input_pipeline.py --data_dir DIR --layout unified --batches 20

For 0, 1 and 2 Grain worker processes: samples/s of the real pipeline (event sampling, PNG
decoding of the needed frames, normalisation, tokenisation, augmentation). The baseline is
the `small` model's train step (forward + backward + AdamW, jitted, this machine) at the
same batch size: samples/s it consumes. Prints one JSON object and a one-line summary with
the ratio pipeline / consumption (target >= 3: data wait < 2% of the step).

Mixture row: the same dataset mixed half and half with a second robot (default: the 7-D joint /
14-D state arm of tests/data_builders/testdata/lerobot_arm7, converted at the same image size),
padded into 14-D state / 7-D actions with masks and one tokenizer, against the single dataset,
0 workers, in alternating A/B rounds of the same run: samples/s of each and their ratio
(aim >= 0.9).

Per-core rows (`--profile`, on by default): one core (one process, one thread) running the
sampler and Grain's collation (its `batch`, read by index as a read thread does), at each of
`--profile_sizes` (64 and 224 px, each on a small reach-v3 dataset built once), where a
sample's time goes by stage (read an episode from ArrayRecord, image decode, resize/augment,
tokenise, collate, the rest), with a warm episode
cache (this small dataset) and a cold one (every sample reads its episode again: a dataset
much larger than the cache). The code at `--baseline_rev` (default: the commit before the
pipeline was made faster) runs the same rows in alternating rounds, so before/after are
measured in the same run under the same load. So does this code reading the same episodes
from the dataset's step store (`wallwm_jax.data.step_store`, written into the dataset if
missing, with each event's end frame at the config's world size, `--end_frames`; a baseline
that predates them reads and resizes the frame; `--step_store=false`: no such rows): "steps"
beside "after" (the TFDS episode
records; `--records=false`: no such rows), and the H100 margin of each. "steps_device"
(`--device_augment`, on by default) is the step store with `data.augment.placement=device`:
the sampler without augmentation, which the train step does instead; its margin counts the
augmentation's estimated time on the H100 (`augment_cost`: XLA's cost analysis of
`device_augment.augment_images` on one batch, printed as `h100_small.augment`).
The accelerator estimate: the `small` step on one H100 from its analytic FLOPs at 40% MFU of
the bf16 dense peak (989 TFLOP/s), the samples/s that step consumes x 3 (margin), against 16 x
the per-core rate (a linear extrapolation to a 16-core host, not a measurement).
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import cProfile  # noqa: E402
import json  # noqa: E402
import pstats  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from absl import flags  # noqa: E402

from experiments.pretrain import get_config  # noqa: E402
from wallwm_jax import cli  # noqa: E402
from wallwm_jax.data.pipeline import make_pipeline, to_event_batch  # noqa: E402
from wallwm_jax.models import wallwm  # noqa: E402


def pipeline_rate(config, workers: int, batches: int, **kwargs) -> dict[str, float]:
    """Samples/s of `batches` batches after one warm-up batch (worker start-up excluded);
    `kwargs` go to `make_pipeline` (a mixture's widths and tokenizer)."""
    config = config.copy_and_resolve_references()
    config.data.num_workers = workers
    pipe = make_pipeline(config.data, global_batch=config.batch_size, seed=0, **kwargs)
    try:
        t0 = time.perf_counter()
        next(pipe)
        warmup = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(batches):
            next(pipe)
        seconds = time.perf_counter() - t0
    finally:
        if workers:
            pipe.iterator.close()
    return {"workers": workers, "samples_per_s": batches * config.batch_size / seconds,
            "first_batch_s": warmup}


def train_consumption_rate(config, steps: int) -> dict[str, float]:
    """Samples/s the `small` train step consumes at this batch size (compile excluded)."""
    model_cfg = get_config(f"size=small,mode={config.mode}").model
    model_cfg.image_size = config.data.image_size
    batch = to_event_batch(next(make_pipeline(config.data, global_batch=config.batch_size,
                                              seed=0)))
    params = wallwm.init_params(model_cfg, jax.random.PRNGKey(0))
    tx = optax.adamw(1e-4)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, batch, rng):
        grads = jax.grad(lambda p: wallwm.compute_loss(model_cfg, p, batch, rng)[0])(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    t0 = time.perf_counter()
    params, opt_state = jax.block_until_ready(step(params, opt_state, batch,
                                                   jax.random.PRNGKey(0)))
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(steps):
        params, opt_state = step(params, opt_state, batch, jax.random.PRNGKey(i))
    jax.block_until_ready(params)
    step_s = (time.perf_counter() - t0) / steps
    return {"step_s": step_s, "compile_s": compile_s,
            "samples_per_s": config.batch_size / step_s}


def second_robot(image_size: int) -> str:
    """tests/data_builders/testdata/lerobot_arm7 converted at `image_size` (built once)."""
    from data_builders.common import EmbodimentFlags
    from data_builders.lerobot_events.lerobot_events import build
    from data_builders.rlds_events import KeyMapping

    source = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests",
                          "data_builders", "testdata", "lerobot_arm7")
    mapping = KeyMapping(image_keys=("observation.images.top", "observation.images.wrist"),
                         state_key="observation.state", action_key="action", gripper_index=6,
                         instruction_key="task", image_size=image_size)
    return build(source, os.path.join(tempfile.gettempdir(), "wallwm_bench_data"), mapping,
                 embodiment=EmbodimentFlags(name="arm7", action_space="joint_position"))


def mixture_rows(config, second: str, batches: int, rounds: int) -> dict:
    """Single dataset (A) vs the mixture with `second` (B), alternating A/B `rounds` times."""
    from wallwm_jax.data.pipeline import model_widths, run_tokenizer

    mixed = config.copy_and_resolve_references()
    mixed.data.mixture = ((config.data.data_dir, 1.0), (second, 1.0))
    widths = model_widths(mixed.data, [config.data.data_dir, second])
    tokenizer = run_tokenizer(mixed.data, os.path.join(tempfile.mkdtemp(), "tokenizer.model"))
    single_rates, mixture_rates = [], []
    for _ in range(rounds):
        single_rates.append(pipeline_rate(config, 0, batches)["samples_per_s"])
        mixture_rates.append(pipeline_rate(mixed, 0, batches, widths=widths,
                                           tokenizer_path=tokenizer)["samples_per_s"])
    ratios = [m / s for m, s in zip(mixture_rates, single_rates, strict=True)]
    return {"second_dataset": second, "widths": list(widths), "rounds": rounds,
            "single_samples_per_s": single_rates, "mixture_samples_per_s": mixture_rates,
            "ratio_per_round": ratios, "ratio_median": sorted(ratios)[len(ratios) // 2]}


# -- per-core stage profile ---------------------------------------------------------------
BASELINE_REV = "42a347901e49f632d369d06340782e083d7c7ec5"  # before the pipeline was made faster
H100_PEAK, H100_MFU, MARGIN, HOST_CORES = 989e12, 0.4, 3.0, 16
H100_HBM, H100_INT32 = 3.35e12, 33.5e12  # bytes/s of HBM3 and int32 ops/s (SXM, no tensor cores)
# cProfile functions whose cumulative time is a stage: (file suffix, function, caller or None)
STAGES = {"read": [("episodes.py", "__getitem__", "_episode")],
          "decode": [("episodes.py", "_decode", None), ("step_store.py", "_decode", None),
                     ("step_records.py", "_decode", None),
                     ("step_records.py", "end_frame", None)],
          "augment": [("augment.py", "augment_frame", None)],
          # `_resize_rgb`: the sampler's name for it in baseline revisions
          "resize": [("Image.py", "resize", "make_sample"), ("Image.py", "resize", "_resize_rgb"),
                     ("Image.py", "resize", "resize_rgb")],
          "tokenise": [("tokenizer.py", "encode", None)]}


def _stage_seconds(stats: pstats.Stats) -> dict[str, float]:
    """Cumulative seconds of each of `STAGES` in a profile (a caller narrows a function to
    the calls made from it)."""
    out = dict.fromkeys(STAGES, 0.0)
    for (path, _, name), (_, _, _, cum, callers) in stats.stats.items():
        for stage, keys in STAGES.items():
            for suffix, fn, caller in keys:
                if name != fn or not path.endswith(suffix):
                    continue
                if caller is None:
                    out[stage] += cum
                else:
                    out[stage] += sum(v[3] for (_, _, c), v in callers.items() if c == caller)
    return out


def core_rates(spec: dict) -> dict:
    """CPU seconds one core spends per sample (sampler + collation into batches) on
    `spec["data_dir"]` -> samples/s per core, with a warm episode cache (after a warm-up pass:
    the small dataset held in it) and a cold one (every sample reads its episode: a dataset much
    larger than the cache), and where the time goes (`STAGES`, shares of a profiled pass
    scaled to the unprofiled time). Runs in a subprocess on the code it is pointed at. CPU
    time, not wall time: other jobs on the machine slow the clock, not the work."""
    import grain
    import numpy as np

    from wallwm_jax.data.sampler import make_sampler

    config = get_config(f"size=small,mode={spec['layout']}")
    config.data.data_dir, config.data.image_size = spec["data_dir"], spec["image_size"]
    data, n, batch = config.data, spec["samples"], spec["batch_size"]

    def sampler_with(cache_size: int):
        # placement "device": the sampler ships frames as they are (the train step augments)
        sampler = make_sampler(data, spec["data_dir"], "train", seed=0,
                               augment=data.augment.enabled
                               and spec.get("placement", "host") == "host", balanced=True)
        sampler.cache_size = cache_size
        if "step_store" in spec:  # this code: the TFDS episode records or the step store
            from wallwm_jax.data.episodes import open_dataset

            sampler.source = open_dataset(spec["data_dir"], "train",
                                          step_store=spec["step_store"])
        return sampler

    def collate_seconds(samples: list[dict], batch: int) -> float:
        """CPU seconds per sample of Grain's `batch` of `samples`, each batch read by index
        (what a pipeline's read thread runs; iterating the dataset instead would start a
        16-thread read-ahead whose CPU, 0.1-0.8 ms per sample here, lands on the sample)."""
        batched = grain.MapDataset.source(samples).batch(batch, drop_remainder=True)
        batched[0]  # Grain's first use
        t0 = time.process_time()
        for j in range(len(batched)):
            batched[j]
        return (time.process_time() - t0) / (len(batched) * batch)

    source = sampler_with(0).source
    episodes = [source[e] for e in range(len(source))]  # files opened
    t0 = time.process_time()
    episodes = [source[e] for e in range(len(source))]
    out = {"image_size": spec["image_size"], "episodes": len(episodes),
           "mean_steps": float(np.mean([len(ep["steps/action"]) for ep in episodes])),
           "read_episode_ms": 1e3 * (time.process_time() - t0) / len(episodes)}
    for cache, sampler in (("warm", sampler_with(64)), ("cold", sampler_with(0))):
        for i in range(2 * n if cache == "warm" else 1):  # warm-up
            sampler(10**9 + i)
        t0, wall = time.process_time(), time.perf_counter()
        samples = [sampler(i) for i in range(n)]
        sample_s, wall_s = (time.process_time() - t0) / n, (time.perf_counter() - wall) / n
        collate_s = collate_seconds(samples, batch)
        profile = cProfile.Profile(time.process_time)
        profile.enable()
        for i in range(n, 2 * n):
            sampler(i)
        profile.disable()
        stats = pstats.Stats(profile)
        scale = sample_s * n / stats.total_tt  # the profiler's overhead taken out
        ms = {k: 1e3 * v * scale / n for k, v in _stage_seconds(stats).items()}
        ms["collate"] = 1e3 * collate_s
        ms["other"] = 1e3 * (sample_s + collate_s) - sum(ms.values())
        out[cache] = {"samples_per_s": 1 / (sample_s + collate_s),
                      "sample_ms": 1e3 * (sample_s + collate_s), "stages_ms": ms,
                      "wall_sample_ms": 1e3 * wall_s}
    return out


def code_root(rev: str) -> str:
    """The package at git revision `rev` (wallwm_jax, experiments, data_builders), extracted
    once into a temporary directory; '' -> this checkout."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not rev:
        return repo
    root = os.path.join(tempfile.gettempdir(), f"wallwm_bench_rev_{rev[:12]}")
    if not os.path.exists(os.path.join(root, "wallwm_jax")):
        os.makedirs(root, exist_ok=True)
        got = subprocess.run(["git", "-C", repo, "archive", rev, "wallwm_jax", "experiments",
                              "data_builders"], capture_output=True)
        if got.returncode:
            raise cli.UserError(f"--baseline_rev={rev}: git archive failed: "
                                f"{got.stderr.decode().strip()}")
        archive = got.stdout
        subprocess.run(["tar", "-x", "-C", root], input=archive, check=True)
    return root


# glibc malloc serves blocks >= 128 KiB (a 224-px frame is 147 KiB, its float copy 588 KiB)
# with fresh mmaps, zeroed by the kernel on first touch, unless the process has freed such
# blocks before (glibc then raises its threshold). Which happens depends on what ran first
# in the process (PNG decoding does; the step store's reads do not), so the rows fix it.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(256 << 20), "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}


def run_core_rates(root: str, spec: dict, malloc_env: bool = True) -> dict:
    """`core_rates(spec)` in a fresh single-threaded process importing the package at `root`
    (with `malloc_env`: glibc's mmap and trim thresholds at 256 MiB, `MALLOC_ENV`)."""
    env = {**os.environ, "PYTHONPATH": root, "JAX_PLATFORMS": "cpu", "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           **(MALLOC_ENV if malloc_env else {})}
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import input_pipeline as b; "
            "print('RESULT' + json.dumps(b.core_rates(json.loads(sys.argv[2]))))")
    proc = subprocess.run([sys.executable, "-c", code, os.path.dirname(os.path.abspath(
        __file__)), json.dumps(spec)], env=env, capture_output=True, text=True, cwd=root)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    if proc.returncode or not lines:
        raise RuntimeError(f"core_rates at {root} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT"):])


def h100_estimate(layout: str, image_size: int) -> dict[str, float]:
    """The `small` train step on one H100 from its analytic FLOPs at 40% MFU, and the
    samples/s a host must feed it with a 3x margin (an estimate, not a measurement)."""
    from wallwm_jax import throughput

    config = get_config(f"size=small,mode={layout}")
    config.data.image_size = image_size
    config = config.copy_and_resolve_references()
    flops = throughput.step_flops(config)
    step_s = flops / (H100_MFU * H100_PEAK)
    return {"batch_size": config.batch_size, "flops_per_step": flops, "step_s": step_s,
            "consumes_samples_per_s": config.batch_size / step_s,
            "needed_samples_per_s": MARGIN * config.batch_size / step_s}


def augment_cost(batch: int, image_size: int, crop_scale: float, jitter: float,
                 step_s: float) -> dict[str, float]:
    """XLA's cost analysis of `device_augment.augment_images` on a [batch, size, size, 3]
    batch (compiled for this machine's CPU: the op count, and bytes counted per unfused op,
    an upper bound of what a GPU's fused kernels move), and its estimated time on one H100:
    the larger of bytes at HBM3's 3.35 TB/s and operations at 33.5 T integer ops/s (no tensor
    cores), against the `small` step's `step_s`."""
    import jax.numpy as jnp

    from wallwm_jax.data.device_augment import augment_images

    images = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.uint8)
    compiled = jax.jit(lambda x, k: augment_images(x, k, crop_scale=crop_scale, jitter=jitter)
                       ).lower(images, jax.random.PRNGKey(0)).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops, moved = float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
    seconds = max(moved / H100_HBM, flops / H100_INT32)
    return {"flops": flops, "bytes_accessed": moved, "h100_s_estimate": seconds,
            "share_of_step": seconds / step_s}


def profile_rows(layout: str, sizes: list[int], dirs: dict[int, str], baseline: str,
                 samples: int, batch: int, rounds: int, steps: bool = True,
                 malloc_env: bool = True, device: bool = True,
                 records: bool = True, baseline_placement: str = "host",
                 end_frames: bool = True) -> list[dict]:
    """Per image size: the per-core rows of this code on the TFDS episode records ("after",
    with `records`), on the step store ("steps", with `steps`; "steps_device" with `device`:
    augmentation left to the train step, `data.augment.placement=device`) and of `baseline`
    ("before", with `baseline_placement`), in alternating rounds (medians), the speed-ups, and
    the 16-core host against
    the H100 estimate (for "steps_device" the step's time includes the augmentation's
    estimate, `augment_cost`). With `end_frames` the store gets each event's end frame at the
    config's `data.world_size` (read by this code; a baseline that predates them ignores them)."""
    here = code_root("")
    roots = {"after": (here, {"step_store": False})} if records else {}
    if steps or device:
        from wallwm_jax.data.step_store import write_step_store
    if steps:
        roots["steps"] = (here, {"step_store": True})
    if device:
        roots["steps_device"] = (here, {"step_store": True, "placement": "device"})
    if baseline:
        # the baseline reads what its code reads by default (the store when written)
        roots["before"] = (code_root(baseline), {"placement": baseline_placement})
    rows = []
    for size in sizes:
        if steps or device:
            world = int(get_config(f"size=small,mode={layout}").data.world_size)
            write_step_store(dirs[size], world if end_frames else ())
        spec = {"data_dir": dirs[size], "image_size": size, "layout": layout,
                "samples": samples, "batch_size": batch}
        runs: dict[str, list[dict]] = {k: [] for k in roots}
        for _ in range(rounds):
            for name, (root, extra) in roots.items():
                runs[name].append(run_core_rates(root, {**spec, **extra}, malloc_env))
        h100 = h100_estimate(layout, size)
        row = {"image_size": size, "rounds": rounds, "h100_small": h100,
               "malloc_env": MALLOC_ENV if malloc_env else {}}
        if device:
            aug = get_config(f"size=small,mode={layout}").data.augment
            h100["augment"] = augment_cost(h100["batch_size"], size, aug.crop_scale, aug.jitter,
                                           h100["step_s"])
        for name, results in runs.items():
            # each cache's row (rate and stages) from its own median round
            med = {c: sorted(results, key=lambda r: r[c]["samples_per_s"])[len(results) // 2]
                   for c in ("warm", "cold")}
            row[name] = {**med["warm"], "cold": med["cold"]["cold"],
                         "round_warm_samples_per_s": [r["warm"]["samples_per_s"]
                                                             for r in results],
                         "round_cold_samples_per_s": [r["cold"]["samples_per_s"]
                                                      for r in results]}
        # samples/s the step consumes: the model alone, or with the augmentation on the device
        consumes = {name: h100["consumes_samples_per_s"] for name in roots}
        if device:
            consumes["steps_device"] = h100["batch_size"] / (
                h100["step_s"] + h100["augment"]["h100_s_estimate"])
            if baseline_placement == "device" and "before" in roots:
                consumes["before"] = consumes["steps_device"]
        for cache in ("warm", "cold"):
            for name, tag in (("after", ""), ("steps", "steps_"),
                              ("steps_device", "steps_device_"), ("before", "before_")):
                if name not in row:
                    continue
                per_core = row[name][cache]["samples_per_s"]
                row[f"host16_{tag}{cache}_samples_per_s"] = HOST_CORES * per_core
                row[f"host16_{tag}{cache}_margin"] = HOST_CORES * per_core / consumes[name]
            for name, base, key in (("after", "before", "speedup"),
                                    ("steps", "after", "steps_speedup"),
                                    ("steps", "before", "steps_vs_before"),
                                    ("steps_device", "steps", "device_speedup"),
                                    ("steps_device", "before", "device_vs_before")):
                if name in row and base in row:
                    row[f"{key}_{cache}"] = float(np.median([
                        a[cache]["samples_per_s"] / b[cache]["samples_per_s"]
                        for a, b in zip(runs[name], runs[base], strict=True)]))
        rows.append(row)
    return rows


def profile_datasets(sizes: list[int]) -> dict[int, str]:
    """A small reach-v3 dataset (4 episodes) at each image size, built once under the temp
    directory."""
    from data_builders.metaworld_events import metaworld_events as mwe

    return {s: mwe.build(os.path.join(tempfile.gettempdir(), "wallwm_bench_data"),
                         tasks=("reach-v3",), episodes_per_task=4, image_size=s)
            for s in sizes}


ROW_LABELS = {"before": "before", "after": "episode records", "steps": "step store",
              "steps_device": "step store, augment on device"}


def profile_summary(rows: list[dict]) -> str:
    """One line: per-core rates (warm / cold) of each row, the 16-core host's margin over an
    H100 `small` step's need, and the speed-ups over "before"."""
    parts = []
    for r in rows:
        rates = []
        for name, label in ROW_LABELS.items():
            if name not in r:
                continue
            text = (f"{label} {r[name]['warm']['samples_per_s']:.0f} / "
                    f"{r[name]['cold']['samples_per_s']:.0f}")
            tag = {"after": "", "steps": "steps_", "steps_device": "steps_device_",
                   "before": "before_"}.get(name)
            if tag is not None:
                text += (f" (16 cores {r[f'host16_{tag}warm_margin']:.2f}x / "
                         f"{r[f'host16_{tag}cold_margin']:.2f}x")
                key = {"after": "speedup", "steps": "steps_vs_before",
                       "steps_device": "device_vs_before", "before": ""}[name]
                if f"{key}_warm" in r:
                    text += f"; x{r[f'{key}_warm']:.2f} / x{r[f'{key}_cold']:.2f} of before"
                text += ")"
            rates.append(text)
        parts.append(f"{r['image_size']} px warm / cold samples/s per core: " + ", ".join(rates)
                     + f" [H100 small step est. {1e3 * r['h100_small']['step_s']:.1f} ms at 40% "
                     "MFU; target 3x]")
    return "per core: " + "; ".join(parts)


def define_flags() -> None:
    """The benchmark's flags (defined only when run as a program)."""
    flags.DEFINE_string("data_dir", "", "Built dataset dir (default: build one).")
    flags.DEFINE_enum("layout", "event", ["event", "unified", "chunk"], "Sample layout.")
    flags.DEFINE_integer("batch_size", 32, "Global batch.")
    flags.DEFINE_integer("batches", 10, "Batches timed per worker count.")
    flags.DEFINE_integer("train_steps", 3, "Train steps timed.")
    flags.DEFINE_list("workers", ["0", "1", "2"], "Grain worker counts.")
    flags.DEFINE_string("mixture_dir", "", "Second robot's dataset for the mixture row "
                        "(default: lerobot_arm7 test data, converted); 'none': no row.")
    flags.DEFINE_integer("mixture_rounds", 3, "A/B rounds of the mixture row.")
    flags.DEFINE_bool("profile", True, "Per-core stage profile, before/after, H100 estimate.")
    flags.DEFINE_list("profile_sizes", ["64", "224"], "Image sizes of the per-core rows.")
    flags.DEFINE_list("profile_dirs", [], "SIZE=DIR datasets for the per-core rows (default: "
                      "a 4-episode reach-v3 dataset built per size).")
    flags.DEFINE_string("baseline_rev", BASELINE_REV, "Git revision timed as 'before' in "
                        "alternating rounds ('' for none).")
    flags.DEFINE_enum("baseline_placement", "host", ["host", "device"], "Augmentation of the "
                      "'before' rows: on the host, or left to the train step (a baseline with "
                      "data.augment.placement=device, to compare with 'steps_device').")
    flags.DEFINE_integer("profile_samples", 96, "Samples timed per per-core measurement.")
    flags.DEFINE_integer("rounds", 3, "Alternating before/after rounds of the per-core rows.")
    flags.DEFINE_bool("step_store", True, "Per-core rows on the step store too ('steps'; "
                      "written into the datasets of the per-core rows if missing).")
    flags.DEFINE_bool("device_augment", True, "Per-core rows on the step store with the "
                      "augmentation left to the train step ('steps_device', "
                      "data.augment.placement=device), and its cost on the device.")
    flags.DEFINE_bool("end_frames", True, "The step store of the per-core rows with each "
                      "event's end frame at the config's world size (added if missing; this "
                      "code reads it instead of resizing a frame). A store that has them keeps "
                      "them: for rows without, point --profile_dirs at a store without.")
    flags.DEFINE_bool("records", True, "Per-core rows on the TFDS episode records ('after').")
    flags.DEFINE_bool("malloc_env", True, "Per-core processes with glibc's mmap/trim "
                      "thresholds at 256 MiB (MALLOC_ENV); false: the allocator's defaults.")


def main(argv: list[str]) -> None:
    """Run the benchmark and print JSON + a summary line."""
    cli.positional(argv)
    args = flags.FLAGS

    data_dir = args.data_dir
    if not data_dir:
        from data_builders.metaworld_events import metaworld_events as mwe

        data_dir = mwe.build(os.path.join(tempfile.gettempdir(), "wallwm_bench_data"),
                             episodes_per_task=6, image_size=64)
    config = get_config(f"size=small,mode={args.layout}")
    config.data.data_dir = data_dir
    config.batch_size = args.batch_size
    profile = None
    if args.profile:
        sizes = [int(s) for s in args.profile_sizes]
        given = {int(k): v for k, v in (d.split("=", 1) for d in args.profile_dirs)}
        dirs = {**profile_datasets([s for s in sizes if s not in given]), **given}
        profile = profile_rows(args.layout, sizes, dirs, args.baseline_rev,
                               args.profile_samples, args.batch_size, args.rounds,
                               args.step_store, args.malloc_env, args.device_augment,
                               args.records, args.baseline_placement, args.end_frames)
    rows = [pipeline_rate(config, int(w), args.batches) for w in args.workers]
    mixture = None
    if args.mixture_dir != "none":
        second = args.mixture_dir or second_robot(config.data.image_size)
        mixture = mixture_rows(config, second, args.batches, args.mixture_rounds)
    train = train_consumption_rate(config, args.train_steps) if args.train_steps else None
    for row in rows:
        row["ratio_to_train_step"] = (row["samples_per_s"] / train["samples_per_s"]
                                      if train else None)
    print(json.dumps({"device": jax.devices()[0].device_kind, "layout": args.layout,
                      "batch_size": args.batch_size, "load_average": os.getloadavg(),
                      "cpu_count": os.cpu_count(), "per_core": profile, "pipeline": rows,
                      "mixture": mixture, "train_step_small": train}, indent=1))
    if profile:
        print(profile_summary(profile))
    if mixture:
        mid = args.mixture_rounds // 2
        mixed, single = (sorted(mixture[k])[mid] for k in ("mixture_samples_per_s",
                                                           "single_samples_per_s"))
        print(f"mixture (2 datasets, padded to {mixture['widths']}): {mixed:.0f} samples/s vs "
              f"single {single:.0f} -> median ratio {mixture['ratio_median']:.2f}x over "
              f"{args.mixture_rounds} A/B rounds")
    if not train or not rows:
        return
    best = max(rows, key=lambda r: r["samples_per_s"])
    print(f"input pipeline ({args.layout}, batch {args.batch_size}): "
          + ", ".join(f"{r['workers']} workers {r['samples_per_s']:.0f} samples/s" for r in rows)
          + f"; small train step consumes {train['samples_per_s']:.1f} samples/s "
          f"({train['step_s']:.2f} s/step) -> best ratio {best['ratio_to_train_step']:.1f}x")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
