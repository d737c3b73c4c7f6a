"""Why does a demo policy fail? Offline and closed-loop diagnostics of an export.

    python -m experiments.demo_diagnosis --export DIR/export --dataset DATASET_DIR [--closed_loop 3]

Prints, per task and event phase (held-out `val` episodes of the dataset):
- the action error of the policy's chunk against the expert's actions of the rest of the event
  (raw units, MSE per step and for the first action), next to the error of always predicting
  the training-set mean action (the "knows nothing" baseline);
- the duration head: predicted steps vs the true remaining steps of the event (histogram and
  exact-bin accuracy);
and, with `--closed_loop N`, N closed-loop episodes per task at evaluation scenes (the demo
suite's `--split` scenes, `dev` by default: a diagnosis informs tuning, so it never looks at
`test`): the cosine between the policy's executed action and the scripted expert's
action at the same state, and the final hand-target distance.

The third question, whether the observation can tell where the target is, needs no model:
`--state_probe N` rolls out N state-only expert episodes per task (no rendering) and fits a
k-nearest-neighbour regressor of the expert action on (a) the 4-D agent state and (b) that
state plus object and goal positions (privileged simulator state), scoring R^2 on held-out
episodes.

`--response N` asks how strongly the policy reacts to where things are: at the first step of N
evaluation scenes per task it moves one state coordinate by +-3 cm (hand x/y; object x/y with
privileged state) and reports the change of the policy's first action along that axis per
metre, next to the scripted expert's at the same perturbed states (MetaWorld's experts are
proportional controllers: about -10 for the hand, +10 for the object they aim at; 0 where the
expert's action is clipped at +-1, as in reach's first step, or where it ignores the object).
Only the state vector moves, not the rendered image.
"""

from __future__ import annotations

import collections
import json

import numpy as np
from absl import app, flags

_EXPORT = flags.DEFINE_string("export", None, "Export bundle to diagnose.")
_DATASET = flags.DEFINE_string("dataset", None, "Dataset version dir (its val split is used).")
_CLOSED = flags.DEFINE_integer("closed_loop", 0, "Closed-loop episodes per task (0: none).")
_PROBE = flags.DEFINE_integer("state_probe", 0, "Expert episodes per task for the state probe.")
_STRIDE = flags.DEFINE_integer("stride", 3, "Evaluate every k-th step of each val event.")
_RESPONSE = flags.DEFINE_integer("response", 0, "Evaluation scenes per task for the state "
                                 "response probe (0: none).")
_SPLIT = flags.DEFINE_enum("split", "dev", ["dev", "test"], "Scene split of the closed-loop "
                           "and response probes (dev: what tuning may look at).")

# (name, index in the state vector and in MetaWorld's observation, action axis it drives)
RESPONSE_COORDS = (("hand_x", 0, 0), ("hand_y", 1, 1), ("object_x", 4, 0), ("object_y", 5, 1))


def offline(policy, dataset_dir: str, stride: int) -> dict:
    from wallwm_jax.data.episodes import open_dataset

    source = open_dataset(dataset_dir, "val")
    mean_action = np.asarray(policy.norm_stats["action"]["mean"], np.float32)
    if policy.action_space != "actions":  # the stats are the targets'; the actions' mean here
        mean_action = np.concatenate([np.asarray(source[i]["steps/action"], np.float32)
                                      for i in range(len(source))]).mean(0)
    rows = collections.defaultdict(lambda: collections.defaultdict(list))
    for i in range(len(source)):
        ep = source[i]
        task = ep["episode_metadata/task"]
        actions = np.asarray(ep["steps/action"])
        states = np.asarray(ep["steps/observation/state"])
        frames = ep["steps/observation/image"]
        for k, (s, e) in enumerate(zip(ep["events/start"], ep["events/end"], strict=True)):
            phase = ep["events/phase"][k]
            for t in range(int(s), int(e), stride):
                out = policy.act(frames[t], states[t], ep["episode_metadata/instruction"],
                                 ep["events/caption"][k], mode="event")
                target = actions[t:int(e)][:len(out["chunk"])]
                n = len(target)
                # In the robot's action units: a position-target policy's chunk becomes the
                # actions it would take at the expert's states of those steps.
                chunk = np.stack([policy.env_action(a, states[t + j])
                                  for j, a in enumerate(out["chunk"][:n])])
                r = rows[(task, phase)]
                r["mse"].append(float(np.mean((chunk - target) ** 2)))
                r["mse_first"].append(float(np.mean((chunk[0] - target[0]) ** 2)))
                r["mse_mean_action"].append(float(np.mean((mean_action - target) ** 2)))
                r["dur_pred"].append(int(len(out["actions"])))
                r["dur_true"].append(int(e) - t)
                r["bin_hit"].append(int(out["duration_bin"][0]) ==
                                    policy.io.duration_bin(int(e) - t))
    table = {}
    for (task, phase), r in sorted(rows.items()):
        table[f"{task}/{phase}"] = {
            "n": len(r["mse"]),
            "action_mse": round(float(np.mean(r["mse"])), 4),
            "first_action_mse": round(float(np.mean(r["mse_first"])), 4),
            "mean_action_baseline_mse": round(float(np.mean(r["mse_mean_action"])), 4),
            "duration_pred_steps": dict(collections.Counter(r["dur_pred"])),
            "duration_true_mean": round(float(np.mean(r["dur_true"])), 1),
            "duration_bin_acc": round(float(np.mean(r["bin_hit"])), 2),
        }
    return table


def closed_loop(policy, episodes: int, split: str = "dev") -> dict:
    from wallwm_jax.envs.metaworld import MetaWorldTask
    from wallwm_jax.evaluation import suites
    from wallwm_jax.evaluation.harness import OraclePlanner, Wording

    suite = suites.get("demo")
    out = {}
    for task in suite.tasks:
        cos, final, succ, lens = [], [], 0, []
        for ep, seed in enumerate(suites.scene_seeds(suite, task, split, episodes)):
            env = MetaWorldTask(task, seed=seed, image_size=policy.config.data.image_size,
                                privileged_state=policy.privileged_state)
            policy.reset(seed % 2**31)
            wording = Wording(split="train", variant=ep % 3)
            planner = OraclePlanner()
            try:
                obs = env.reset()
                steps, done = 0, False
                while steps < suite.episode_limit and not done:
                    caption = planner(env, task, wording)
                    res = policy.act(obs["image"], obs["state"], wording.instruction(task),
                                     caption, mode="event")
                    lens.append(len(res["actions"]))
                    for a in res["actions"]:
                        expert = env.expert_action()
                        a = np.clip(policy.env_action(a, obs["state"]), -1, 1)
                        denom = np.linalg.norm(a[:3]) * np.linalg.norm(expert[:3]) + 1e-8
                        cos.append(float(np.dot(a[:3], expert[:3]) / denom))
                        obs, s = env.step(a)
                        steps += 1
                        if s:
                            done = True
                            succ += 1
                            break
                        if steps >= suite.episode_limit or planner(env, task, wording) != caption:
                            break
                full = env._obs
                target = full[-3:] if task == "reach-v3" else full[4:7]
                final.append(float(np.linalg.norm(full[:3] - target)))
            finally:
                env.close()
        out[task] = {"success": f"{succ}/{episodes}",
                     "cos_policy_vs_expert_xyz": round(float(np.mean(cos)), 3),
                     "final_hand_to_target_m": round(float(np.mean(final)), 3),
                     "chunk_lengths": dict(collections.Counter(lens))}
    return out


def state_response(policy, scenes: int, tasks: tuple[str, ...] | None = None,
                   delta: float = 0.03, samples: int = 3, split: str = "dev") -> dict:
    """Per task and coordinate: d(first action)/d(coordinate) in action units per metre of the
    policy (mean over `samples` sampling seeds) and of the scripted expert, by central
    difference +-`delta` at the first step of `scenes` demo-suite `split` scenes, averaged."""
    from wallwm_jax.envs.metaworld import MetaWorldTask
    from wallwm_jax.evaluation import suites
    from wallwm_jax.evaluation.harness import OraclePlanner, Wording

    suite = suites.get("demo")
    coords = [c for c in RESPONSE_COORDS if policy.privileged_state or c[1] < 4]
    out = {}
    for task in tasks or suite.tasks:
        slopes: dict[str, dict[str, list[float]]] = {n: {"policy": [], "expert": []}
                                                     for n, _, _ in coords}
        for seed in suites.scene_seeds(suite, task, split, scenes):
            env = MetaWorldTask(task, seed=seed,
                                image_size=policy.config.data.image_size,
                                privileged_state=policy.privileged_state)
            try:
                obs = env.reset()
                wording = Wording(split="train", variant=0)
                caption = OraclePlanner()(env, task, wording)
                full = env._obs.copy()
                for name, index, axis in coords:
                    acts = {"policy": [], "expert": []}
                    for sign in (1.0, -1.0):
                        state = obs["state"].copy()
                        state[index] += sign * delta
                        a = []
                        for k in range(samples):
                            policy.reset(k)
                            first = policy.act(obs["image"], state, wording.instruction(task),
                                               caption, mode="event")["actions"][0]
                            a.append(policy.env_action(first, state)[axis])
                        acts["policy"].append(float(np.mean(a)))
                        env._obs = full.copy()
                        env._obs[index] += sign * delta
                        acts["expert"].append(float(np.clip(env.expert_action(), -1, 1)[axis]))
                        env._obs = full
                    for who, (plus, minus) in acts.items():
                        slopes[name][who].append((plus - minus) / (2 * delta))
            finally:
                env.close()
        out[task] = {name: {who: round(float(np.mean(v)), 2) for who, v in d.items()}
                     for name, d in slopes.items()}
    return out


def _agent(x: np.ndarray) -> np.ndarray:
    return x[:, :4]


def _privileged(x: np.ndarray) -> np.ndarray:
    """hand, gripper, object - hand, goal - hand (the same 10 numbers, relative)."""
    return np.concatenate([x[:, :4], x[:, 4:7] - x[:, :3], x[:, 7:10] - x[:, :3]], axis=1)


def state_probe(episodes: int) -> dict:
    from wallwm_jax.envs.metaworld import DEMO_TASKS, MetaWorldTask

    out = {}
    for task in DEMO_TASKS:
        per_ep = []
        for i in range(episodes):
            env = MetaWorldTask(task, seed=10_000 + i)
            env.render_images = False
            env.reset()
            xs, ys = [], []
            try:
                for _ in range(200):
                    full = env._obs
                    a = np.clip(env.expert_action(), -1, 1)
                    xs.append(np.concatenate([full[:4], full[4:7], full[-3:]]))
                    ys.append(a)
                    _, s = env.step(a)
                    if s:
                        break
            finally:
                env.close()
            per_ep.append((np.asarray(xs), np.asarray(ys)))
        n_train = int(0.8 * episodes)
        train, val = per_ep[:n_train], per_ep[n_train:]
        ytr = np.concatenate([y for _, y in train])
        res = {}
        for name, feats in (("agent_state_4d", _agent), ("privileged_10d", _privileged)):
            xtr = np.concatenate([feats(x) for x, _ in train])
            mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
            for part, stop in (("all_steps", None), ("first_10_steps", 10)):
                xva = np.concatenate([feats(x)[:stop] for x, _ in val])
                yva = np.concatenate([y[:stop] for _, y in val])
                d = ((((xva - mu) / sd)[:, None, :] - ((xtr - mu) / sd)[None]) ** 2).sum(-1)
                pred = ytr[np.argsort(d, axis=1)[:, :5]].mean(1)
                r2 = 1 - ((pred - yva) ** 2).sum(0) / (((yva - yva.mean(0)) ** 2).sum(0) + 1e-9)
                res[f"{name}/{part}"] = round(float(np.mean(r2[:3])), 3)  # xyz motion dims
        out[task] = res
    return out


def main(argv):
    del argv
    report = {}
    if _PROBE.value:
        report["state_probe_knn_r2_xyz"] = state_probe(_PROBE.value)
        print(json.dumps(report["state_probe_knn_r2_xyz"], indent=1), flush=True)
    if _EXPORT.value:
        from wallwm_jax.policy import load_policy

        policy = load_policy(_EXPORT.value)
        if _DATASET.value:
            report["offline_val"] = offline(policy, _DATASET.value, _STRIDE.value)
            print(json.dumps(report["offline_val"], indent=1), flush=True)
        if _RESPONSE.value:
            report["state_response"] = state_response(policy, _RESPONSE.value,
                                                      split=_SPLIT.value)
            print(json.dumps(report["state_response"], indent=1), flush=True)
        if _CLOSED.value:
            report["closed_loop"] = closed_loop(policy, _CLOSED.value, _SPLIT.value)
            print(json.dumps(report["closed_loop"], indent=1), flush=True)
    if _CLOSED.value or _RESPONSE.value:
        report["split"] = _SPLIT.value
        report["privileged_state"] = bool(policy.privileged_state)
    print("REPORT " + json.dumps(report))


if __name__ == "__main__":
    app.run(main)
