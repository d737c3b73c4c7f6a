"""Fine-tuning config: start from an export, optionally freeze the ViT and/or the backbone.

    python -m wallwm_jax.train --workdir /tmp/ft \
        --config experiments/finetune.py:export=EXPORT,data=DATASET,freeze=vit+backbone

`arg` switches: `export` (bundle dir: model config, weights, tokenizer and norm stats come from
it), `data` (the fine-tuning dataset), `freeze` (`none`, `vit`, `backbone` or `vit+backbone`),
`scratch=1` (same model and data, random init: the baseline). The new dataset is read with the
export's tokenizer and, for a robot the export knows (embodiments.json), its norm stats, so
token ids and action scales stay what the model learnt; a new robot (another embodiment name,
state and actions within the model's widths) gets its own statistics and is padded into the
model's widths with masks.
Single fields on the command line as usual (`--config.optimizer.learning_rate=3e-5`).

`python experiments/finetune.py --export EXPORT [--task T]` runs the comparison
of docs/deploy.md: fine-tuned from the export vs trained from scratch on a few demonstrations
of a MetaWorld task left out of pretraining, closed-loop success of each.
"""

from __future__ import annotations

import os

import ml_collections

from wallwm_jax.config_args import parse_config_arg

# The `arg` switches and their defaults (`scratch` takes 1/0, true/false or yes/no).
_ARG_DEFAULTS = {"export": "", "data": "", "freeze": "none", "scratch": False}


def _with_new_fields(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """An export's config with the fields added to the recipe since it was trained, at their
    defaults (an export from an older version then passes today's config check)."""
    from experiments.pretrain import get_config as pretrain_config

    def fill(saved: ml_collections.ConfigDict, default: ml_collections.ConfigDict) -> None:
        for key, value in default.items():
            if key not in saved:
                with saved.unlocked():
                    saved[key] = value
            elif isinstance(value, ml_collections.ConfigDict) and isinstance(
                    saved[key], ml_collections.ConfigDict):
                fill(saved[key], value)

    fill(config, pretrain_config(f"mode={config.get('mode', 'event')}"))
    return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The export's training config, pointed at the fine-tuning data with its own schedule."""
    from wallwm_jax.export import read_config

    args = parse_config_arg(arg, _ARG_DEFAULTS)
    if not args["export"]:
        raise ValueError("experiments/finetune.py needs export=DIR (an export bundle)")
    export = os.path.abspath(args["export"])
    config = _with_new_fields(read_config(export))
    scratch = args["scratch"]
    config.init_from = "" if scratch else export
    if args["data"]:
        config.data.data_dir = args["data"]
    mixture = [d for d, _ in config.data.get("mixture") or ()]
    if not args["data"] and mixture:
        config.data.data_dir = mixture[0]
    config.data.mixture = ()
    config.data.tokenizer = os.path.join(export, "tokenizer.model")
    embodiments = os.path.join(export, "embodiments.json")
    if os.path.exists(embodiments):  # each robot's own statistics; a new robot: the dataset's
        config.data.norm_stats = embodiments
        with config.data.unlocked():  # padded into the model's widths when narrower or new
            config.data.embodiment_masks = bool(mixture) or config.data.get(
                "embodiment_masks", False)
    else:
        config.data.norm_stats = os.path.join(export, "norm_stats.json")
    parts = () if args["freeze"] in ("none", "") else tuple(args["freeze"].split("+"))
    config.optimizer.freeze = () if scratch else parts
    config.optimizer.learning_rate = 1e-3 if scratch else 1e-4  # own schedule
    config.optimizer.warmup_steps = 10
    config.total_steps = 200
    config.checkpoint.every_steps = 100
    config.eval.closed_loop.every_steps = 0  # the comparison below evaluates the end
    config.init_pretrained = ()
    return config


def compare(export: str, task: str | None, workdir: str, *, suite: str = "mt50_heldout",
            demos: int = 5, steps: int = 200, episodes: int = 10, freeze: str = "vit",
            batch_size: int = 16) -> dict:
    """Fine-tune from `export` and train from scratch on `demos` expert demonstrations of
    `task` (default: the first of `suite`, tasks outside MT10 pretraining), then evaluate
    both closed loop on `episodes` unseen scenes of that suite; returns the table."""
    from data_builders.metaworld_events import build
    from wallwm_jax.evaluation import suites
    from wallwm_jax.evaluation.runner import PolicySpec, evaluate_suite
    from wallwm_jax.export import export_bundle, read_config
    from wallwm_jax.train import train_and_evaluate

    base = read_config(export)
    task = task or suites.get(suite).tasks[0]
    data = build(os.path.join(workdir, "data"), config="demo", tasks=(task,),
                 episodes_per_task=demos, image_size=base.data.image_size, seed=1)
    held_out = suites.get(suite).subset((task,), episodes)
    rows = {}
    for name, arg in (("from export", f"freeze={freeze}"), ("from scratch", "scratch=1")):
        config = get_config(f"export={export},data={data},{arg}")
        config.total_steps, config.batch_size = steps, batch_size
        run = os.path.join(workdir, name.replace(" ", "_"))
        result = train_and_evaluate(config, run)
        out = export_bundle(os.path.join(run, "export"), result["params"], config,
                            result["norm_stats"], config.data.tokenizer,
                            embodiments=result["embodiments"])
        res = evaluate_suite(PolicySpec(out), held_out, os.path.join(run, "eval"), progress=False)
        rows[name] = res["summary"]["overall"]
    return {"task": task, "demos": demos, "steps": steps, "episodes": episodes, "rows": rows}


def main(argv: list[str]) -> None:
    """CLI: the fine-tuned vs from-scratch table for one held-out task."""
    import json

    from absl import flags

    fl = flags.FLAGS
    table = compare(fl.export, fl.task, fl.workdir, suite=fl.suite, demos=fl.demos,
                    steps=fl.steps, episodes=fl.episodes, freeze=fl.freeze)
    print(json.dumps(table, indent=1))
    for name, r in table["rows"].items():
        print(f"{name}: {r['successes']}/{r['n']} ({r['success']:.0%})")


if __name__ == "__main__":
    from absl import flags

    from wallwm_jax import cli

    flags.DEFINE_string("export", None, "Pretrained export bundle to start from.")
    flags.DEFINE_string("task", None, "Held-out task (default: the first task of --suite).")
    flags.DEFINE_string("suite", "mt50_heldout", "Suite the task comes from.")
    flags.DEFINE_string("workdir", "/tmp/wallwm_finetune", "Where data, runs and evals go.")
    flags.DEFINE_integer("demos", 5, "Expert demonstrations of the task.")
    flags.DEFINE_integer("steps", 200, "Fine-tuning steps (both arms).")
    flags.DEFINE_integer("episodes", 10, "Closed-loop episodes per arm.")
    flags.DEFINE_string("freeze", "vit", "Parts held fixed: vit, backbone, vit+backbone or none.")
    flags.mark_flags_as_required(["export"])
    cli.run(main)
