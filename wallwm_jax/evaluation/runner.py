"""Run a suite against a policy (export, checkpoint or the scripted expert) and write the
results: one record per episode, success per task / group / overall, tables and pictures.

Episodes are seeded per (task, episode) — the scene from the suite's `dev` or `test` split
(`suites.scene_seeds`), the policy's sampling noise from the same seed — so `workers=N` gives
exactly what one worker gives, in the same order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import os
import sys
import time
from typing import Any

from tqdm.auto import tqdm

from wallwm_jax.data import captions
from wallwm_jax.evaluation import pictures, stats
from wallwm_jax.evaluation.episode_log import EpisodeLog, LogMismatch, weights_digest
from wallwm_jax.evaluation.harness import (
    PLANNERS,
    GuardedEnv,
    Recorder,
    Wording,
    describe_privileged,
    privileged_inputs,
    run_episode,
)
from wallwm_jax.evaluation.suites import Suite, check_split, observation_note, scene_seeds

EXPERT = "expert"


class EvaluationError(ValueError):
    """A user error in what was asked to be evaluated (printed without a traceback)."""


@dataclasses.dataclass(frozen=True)
class PolicySpec:
    """What to evaluate: `path` an export, a checkpoint directory or "expert"."""

    path: str
    step: int | None = None
    mode: str | None = None
    # Who writes the caption: event mode's planner (None: "oracle"); in unified mode None is
    # the model itself, a name feeds that planner's caption as caption 0 (the control).
    planner: str | None = None
    execute_steps: int | None = None


def resolve_planner(planner: str | None, mode: str) -> str | None:
    """The planner a run in `mode` uses: event mode's defaults to `oracle`; unified mode's
    to none (the model decodes its own captions); chunk and expert runs take none."""
    if planner is not None and planner not in PLANNERS:
        raise EvaluationError(f"unknown planner {planner!r}; planners: {list(PLANNERS)}")
    if mode == "event":
        return planner or "oracle"
    if mode == "unified":
        return planner
    if planner is not None:
        raise EvaluationError(f"--planner {planner} applies to event and unified mode, not "
                              f"{mode}")
    return None


def _checkpoint_dir(path: str) -> str | None:
    """`path` or its `checkpoints/` child when it holds finished checkpoint steps."""
    from wallwm_jax.checkpoint import finished_steps

    for cand in (path, os.path.join(path, "checkpoints")):
        if finished_steps(cand):
            return cand
    return None


def load_actor(spec: PolicySpec) -> Any:
    """The Policy named by `spec` (None for the expert); errors name the missing file."""
    if spec.path == EXPERT:
        return None
    from wallwm_jax.bundle import CONFIG_FILE
    from wallwm_jax.export import read_checkpoint
    from wallwm_jax.policy import Policy, load_policy, suite_embodiment

    if not os.path.exists(spec.path):
        raise EvaluationError(f"--policy {spec.path}: no such file or directory (expected an "
                              "export bundle, a checkpoint directory or 'expert')")
    if os.path.isfile(os.path.join(spec.path, CONFIG_FILE)):  # an export, perhaps incomplete
        if spec.step is not None:
            raise EvaluationError("--step applies to checkpoint directories, not exports")
        try:
            return load_policy(spec.path, mode=spec.mode,
                               embodiment=suite_embodiment(spec.path))
        except (ValueError, FileNotFoundError) as err:  # names the missing or mis-shaped file
            raise EvaluationError(str(err)) from None
    ckpt_dir = _checkpoint_dir(spec.path)
    if ckpt_dir is None:
        raise EvaluationError(f"--policy {spec.path} is neither an export bundle (no "
                              f"{CONFIG_FILE}) nor a checkpoint directory (no finished steps)")
    try:
        params, config, norm_stats, tokenizer_path = read_checkpoint(ckpt_dir, spec.step)
        return Policy(params, config, norm_stats, tokenizer_path, mode=spec.mode)
    except (ValueError, FileNotFoundError) as err:
        raise EvaluationError(str(err)) from None


def _env_cameras(actor: Any) -> tuple[str, ...]:
    """MetaWorld extra cameras a policy reads (`image_<name>` -> `<name>`)."""
    from wallwm_jax.envs.metaworld import EXTRA_CAMERAS

    if actor is None:
        return ()
    extra = tuple(c[len("image_"):] for c in actor.cameras if c != "image")
    unknown = [c for c in extra if c not in EXTRA_CAMERAS]
    if unknown or "image" not in actor.cameras:
        raise EvaluationError(f"the policy reads cameras {list(actor.cameras)}; MetaWorld "
                              f"offers image and {['image_' + c for c in EXTRA_CAMERAS]}")
    return extra


def reads_privileged_state(actor: Any) -> bool:
    """Whether the policy's state vector carries privileged simulator state."""
    return bool(actor is not None and getattr(actor, "privileged_state", False))


def check_actor(actor: Any, suite: Suite) -> None:
    """The policy must read what the suite's protocol provides (state size, cameras).
    A policy trained on privileged simulator state gets it from the environment, except in
    a suite whose protocol fixes the agent state (LeRobot's)."""
    if actor is None:
        return
    if reads_privileged_state(actor):
        from wallwm_jax.data.tasks import state_dim

        if suite.camera_setup == "lerobot":
            raise EvaluationError(f"the policy reads privileged simulator state; suite "
                                  f"{suite.name!r} follows a protocol with {suite.state_dims}-D "
                                  f"agent state only")
        if actor.state_dim != state_dim(True):
            raise EvaluationError(f"the policy reads privileged simulator state but a "
                                  f"{actor.state_dim}-D state; the environment provides "
                                  f"{state_dim(True)}-D")
    elif actor.state_dim != suite.state_dims:
        raise EvaluationError(f"the policy reads a {actor.state_dim}-D state; suite "
                              f"{suite.name!r} provides {suite.state_dims}-D agent state")
    if suite.image_size not in (None, actor.config.data.image_size):
        raise EvaluationError(f"suite {suite.name!r} renders {suite.image_size}px images; the "
                              f"policy reads {actor.config.data.image_size}px")
    _env_cameras(actor)


def paraphrase_record(actor: Any) -> tuple[dict | None, str]:
    """The paraphrase split recorded with the policy's dataset, and where it came from."""
    data_dir = actor.config.data.get("data_dir", "") if actor is not None else ""
    path = os.path.join(data_dir, "paraphrases.json") if data_dir else ""
    if path and os.path.isfile(path):
        with open(path) as f:
            return json.load(f), path
    return None, "caption templates (wallwm_jax.data.captions)"


def _wording(suite: Suite, task: str, episode: int, record: dict | None) -> Wording:
    variant = episode % captions.num_variants(suite.wording)
    return Wording(split=suite.wording, variant=variant,
                   instruction_override=suite.instructions.get(task), record=record)


def _run_job(actor: Any, spec: PolicySpec, suite: Suite, mode: str, task: str, episode: int,
             seed: int, picture_dir: str | None, paraphrases: dict | None) -> dict[str, Any]:
    from wallwm_jax.envs.metaworld import episode_env

    planner_name = resolve_planner(spec.planner if mode != EXPERT else None, mode)
    privileged = actor is None or (planner_name is not None
                                   and PLANNERS[planner_name].privileged)
    t0 = time.perf_counter()
    record: dict[str, Any] = {"task": task, "group": suite.group_of(task), "episode": episode,
                              "seed": seed}
    recorder = Recorder() if picture_dir else None
    with contextlib.ExitStack() as stack:
        try:
            image_size = suite.image_size or (actor.config.data.image_size if actor else 64)
            task_env = stack.enter_context(episode_env(
                task, seed=seed, image_size=image_size, camera=suite.camera,
                camera_setup=suite.camera_setup, extra_cameras=_env_cameras(actor),
                privileged_state=reads_privileged_state(actor)))
            env = GuardedEnv(task_env, privileged=privileged)
        except Exception as err:  # noqa: BLE001
            return dict(record, success=False, steps=0, captions=[], chunk_lengths=[],
                        error=f"{type(err).__name__}: {err}")
        env.render_images = actor is not None or recorder is not None  # the expert reads state
        if actor is not None:
            actor.reset(seed % 2**31)
        planner = PLANNERS[planner_name]() if planner_name is not None else None
        record.update(run_episode(env, actor, task=task, suite=suite, mode=mode,
                                  wording=_wording(suite, task, episode, paraphrases),
                                  planner=planner,
                                  execute_steps=spec.execute_steps, recorder=recorder))
        if record.get("error"):
            task_env.discard()  # the next episode starts in a new environment
    record["wall_s"] = round(time.perf_counter() - t0, 3)
    if recorder is not None and recorder.frames:
        record["pictures"] = _draw(recorder, picture_dir, task, episode, record)
    return record


def _draw(recorder: Recorder, out: str, task: str, episode: int,
          record: dict[str, Any]) -> list[str]:
    stem = os.path.join(out, f"{task}_ep{episode}")
    title = f"{task} episode {episode}: {'success' if record['success'] else 'failure'} " \
            f"in {record['steps']} steps"
    paths = [pictures.film_strip(recorder.frames, recorder.frame_captions, stem + "_strip.png",
                                 title=title),
             pictures.animation(recorder.frames, recorder.frame_captions, stem + ".gif")]
    pairs = [(pred, recorder.frames[min(i, len(recorder.frames) - 1)], i)
             for pred, i in recorder.world]
    if pairs:
        paths.append(pictures.world_comparison(pairs, stem + "_world.png"))
    return [os.path.basename(p) for p in paths]


# -- worker processes ---------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _init_worker(spec: PolicySpec) -> None:
    _WORKER["actor"] = load_actor(spec)


def _worker_job(args: tuple) -> dict[str, Any]:
    return _run_job(_WORKER["actor"], *args)


def _identity(spec: PolicySpec, suite: Suite, mode: str, planner: str | None,
              split: str) -> dict[str, Any]:
    """What must match for a rerun to keep a stopped run's episodes: the policy (an export's
    weights digest, a checkpoint's step), how it acts, and the suite's protocol and split
    (not its task list or episode count: those only say which episodes to play)."""
    if spec.path in (EXPERT, ""):
        policy: dict[str, Any] = {"path": spec.path or "in-memory"}
    else:  # a model's (these modules load JAX, which an expert run never needs)
        from wallwm_jax.bundle import WEIGHTS_FILE
        from wallwm_jax.checkpoint import finished_steps

        if os.path.isfile(os.path.join(spec.path, WEIGHTS_FILE)):
            policy = {"path": os.path.abspath(spec.path),
                      "weights_sha256": weights_digest(os.path.join(spec.path, WEIGHTS_FILE))}
        else:  # a checkpoint directory (load_actor checked it has finished steps)
            steps = finished_steps(_checkpoint_dir(spec.path) or spec.path)
            policy = {"path": os.path.abspath(spec.path),
                      "step": spec.step if spec.step is not None else steps[-1]}
    protocol = {k: v for k, v in suite.protocol().items() if k != "episodes_per_task"}
    return {"policy": policy, "mode": mode, "planner": planner,
            "execute_steps": spec.execute_steps, "suite": suite.name, "split": split,
            "protocol": protocol}


def evaluate_suite(spec: PolicySpec, suite: Suite, workdir: str, *, workers: int = 1,
                   videos: int = 0, actor: Any = None, progress: bool = True,
                   compare: str | None = None, split: str = "test",
                   resume: bool = False) -> dict[str, Any]:
    """Run every (task, episode) of `suite` on its `split` scenes (test: reported figures;
    dev: tuning); write results.json/.md (+ pictures) to workdir.

    `actor` (a loaded Policy) skips loading `spec.path` (the training loop passes its own).
    Each finished episode is appended to workdir/episodes.jsonl; `resume` keeps the episodes
    a stopped run of the same evaluation recorded there and plays only the missing ones
    (`episode_log.py`; another evaluation's log is refused). Returns the results dict that
    results.json holds.
    """
    try:
        check_split(split)
    except ValueError as err:
        raise EvaluationError(str(err)) from None
    os.makedirs(workdir, exist_ok=True)
    if actor is None and spec.path != EXPERT:
        actor = load_actor(spec)
    check_actor(actor, suite)
    mode = EXPERT if actor is None else (spec.mode or actor.mode)
    planner = resolve_planner(spec.planner if mode != EXPERT else None, mode)
    picture_dir = os.path.join(workdir, "pictures")
    record, wording_source = paraphrase_record(actor)
    jobs = [(spec, suite, mode, task, ep, seed, picture_dir if ep < videos else None, record)
            for task in suite.tasks
            for ep, seed in enumerate(scene_seeds(suite, task, split, suite.episodes_per_task))]
    try:
        log = EpisodeLog(workdir, _identity(spec, suite, mode, planner, split), resume=resume)
    except LogMismatch as err:
        raise EvaluationError(str(err)) from None
    keys = [(task, ep, seed) for _, _, _, task, ep, seed, _, _ in jobs]  # episode_key's
    todo = [job for job, key in zip(jobs, keys, strict=True) if key not in log.done]
    t0 = time.perf_counter()
    pbar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), unit="episode",
                desc=f"eval {suite.name} ({mode})", disable=not progress)
    if todo and workers <= 1:
        for job in todo:
            log.append(_run_job(actor, *job))
            pbar.update(1)
    elif todo:
        ctx = multiprocessing.get_context("spawn")  # JAX is not fork-safe
        pool = ctx.Pool(workers, initializer=_init_worker, initargs=(spec,))
        try:
            for record in pool.imap(_worker_job, todo):  # in job order
                log.append(record)
                pbar.update(1)
        finally:  # also on an interrupt: no worker outlives the run
            pool.terminate()
            pool.join()
    pbar.close()
    episodes = [log.done[key] for key in keys]
    protocol = dict(suite.protocol(), camera_view=observation_note(suite),
                    image_size=suite.image_size or (actor.config.data.image_size
                                                    if actor else 64))
    if reads_privileged_state(actor):  # the env gave the policy its object/goal state too
        protocol["state_dims"] = actor.state_dim
    inputs = privileged_inputs(mode, planner, reads_privileged_state(actor))
    results = {
        "suite": suite.name, "split": split, "question": suite.question, "mode": mode,
        "planner": planner, "privileged": bool(inputs),
        "privileged_state": reads_privileged_state(actor), "privileged_inputs": inputs,
        "policy": spec.path or "in-memory",
        "step": spec.step, "execute_steps": spec.execute_steps,
        "protocol": protocol,
        "differences": list(suite.differences), "wording_source": wording_source,
        "wall_s": round(time.perf_counter() - t0, 1), "workers": workers,
        "resumed_episodes": len(jobs) - len(todo), "episodes": episodes,
        "summary": stats.summarise(episodes, suite.groups),
    }
    if mode == "unified":  # the model's captions and event ends against the scripted phase
        from wallwm_jax.evaluation.caption_metrics import closed_loop_scores

        results["caption_scores"] = closed_loop_scores(
            [r for ep in episodes for r in ep.get("replans", [])])
    # The episodes are the costly part: written first; the expert column is optional.
    _write_json(os.path.join(workdir, "results.json"), results)
    _write_text(os.path.join(workdir, "results.md"), _markdown_with_reference(
        results, workdir, compare) + "\n")
    return results


def _markdown_with_reference(results: dict[str, Any], workdir: str,
                             compare: str | None) -> str:
    """results.md with the expert's column when their results are found and fit; a
    comparison that fails is a warning and the table without the column."""
    if results["mode"] == EXPERT:
        return results_markdown(results)
    try:
        reference = find_expert_results(workdir, results["suite"], compare,
                                        split=results["split"])
        return results_markdown(results, reference)
    except Exception as err:  # noqa: BLE001  (another file's shape must not lose these results)
        print(f"warning: results written without the expert comparison: "
              f"{type(err).__name__}: {err}", file=sys.stderr)
        return results_markdown(results)


def _write_text(path: str, text: str) -> None:
    """Write `path` atomically (tmp file + rename); the tmp file goes in every case."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_json(path: str, data: Any) -> None:
    _write_text(path, json.dumps(data, indent=1))


def find_expert_results(workdir: str, suite: str, compare: str | None,
                        split: str = "test") -> dict | None:
    """The expert's results for `suite` on the same scene split: `compare` (file or dir),
    else a sibling of workdir."""
    candidates: list[str] = []
    if compare:
        candidates.append(compare if compare.endswith(".json")
                          else os.path.join(compare, "results.json"))
    parent = os.path.dirname(os.path.abspath(workdir))
    if os.path.isdir(parent):
        candidates += [os.path.join(parent, d, "results.json") for d in sorted(os.listdir(parent))
                       if os.path.abspath(os.path.join(parent, d)) != os.path.abspath(workdir)]
    for path in candidates:
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue  # not a results file (or not ours)
        if (isinstance(data, dict) and data.get("mode") == EXPERT
                and data.get("suite") == suite and data.get("split") == split
                and isinstance(data.get("summary"), dict)):
            return data
    return None


def results_markdown(results: dict[str, Any], expert: dict[str, Any] | None = None) -> str:
    """Per task, per group and overall success with Wilson 95% intervals (+ the expert's)."""
    s = results["summary"]
    ref = expert["summary"] if expert else None
    planner = results["planner"]
    reads = " (reads privileged simulator state)" if planner and planner in PLANNERS \
        and PLANNERS[planner].privileged else ""
    who = f"{results['mode']} mode" + (f", planner `{planner}`{reads}" if planner else "")
    if results.get("privileged_state"):
        who += ", state vector with privileged simulator state (object and goal positions)"
    lines = [f"# {results['suite']}: {results['question']}", "",
             f"policy `{results['policy']}`, {who}; {s['overall']['n']} episodes in "
             f"{results['wall_s']:.0f}s; episode limit {results['protocol']['episode_limit']} "
             f"steps; camera: {results['protocol']['camera_view']}, "
             f"{results['protocol']['image_size']}px; wording: {results['protocol']['wording']} "
             f"paraphrases from {results.get('wording_source', 'templates')}",
             "", f"- scenes: the suite's **{results.get('split', 'pre-split')}** split "
             "(dev: for tuning; test: for reported figures)",
             f"- privileged inputs: {describe_privileged(results.get('privileged_inputs'))}"]
    scores = results.get("caption_scores")
    if scores:
        lines.append("- " + describe_caption_scores(scores))
    for diff in results.get("differences", []):
        lines.append(f"- differs from the reference protocol: {diff}")
    if s.get("errors"):
        lines.append(f"- {s['errors']} episode(s) crashed (counted as failures; see "
                     "results.json)")
    head = "| {} | success [95% CI] (k/n) |" + (" expert |" if ref else "")
    sep = "|---|---|" + ("---|" if ref else "")

    def row(name: str, r: dict, key: str, part: str) -> str:
        line = f"| {name} | {stats.format_rate(r)} |"
        if ref:
            other = ref["overall"] if part == "overall" else ref[part].get(key)
            line += f" {stats.format_rate(other)} |" if other else " - |"
        return line

    lines += ["", head.format("group"), sep]
    lines += [row(g, r, g, "groups") for g, r in s["groups"].items()]
    lines.append(row("**overall**", s["overall"], "", "overall"))
    lines += ["", head.format("task"), sep]
    lines += [row(t, r, t, "tasks") for t, r in s["tasks"].items()]
    return "\n".join(lines)


def describe_caption_scores(scores: dict[str, Any]) -> str:
    """One results.md line: unified mode's captions and event ends vs the scripted phase."""
    parts = []
    if "caption_n" in scores:
        parts.append(f"first caption exact {scores['caption_exact']:.0%}, token accuracy "
                     f"{scores['caption_token_acc']:.0%} over {scores['caption_n']} replans")
    if "boundary_n" in scores:
        parts.append(f"event end placed right (inside or beyond the executed steps) "
                     f"{scores['boundary_acc']:.0%} of {scores['boundary_n']} chunks")
    return ("captions against the scripted phase (scored after the fact, not shown to the "
            "policy): " + ("; ".join(parts) or "nothing scored"))


def summary_metrics(results: dict[str, Any], prefix: str = "closed_loop") -> dict[str, float]:
    """Flat scalars for metrics.jsonl / TensorBoard: per task, per group and overall (and, in
    unified mode, caption and event-boundary accuracy against the scripted phase)."""
    s, name = results["summary"], results["suite"]
    out = {f"{prefix}/{name}/overall": s["overall"]["success"]}
    for key in ("caption_exact", "caption_token_acc", "boundary_acc"):
        if key in results.get("caption_scores", {}):
            out[f"{prefix}/{name}/{key}"] = results["caption_scores"][key]
    out.update({f"{prefix}/{name}/group/{g}": r["success"] for g, r in s["groups"].items()})
    out.update({f"{prefix}/{name}/task/{t}": r["success"] for t, r in s["tasks"].items()})
    return out
