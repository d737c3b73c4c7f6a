"""Action error by event cluster (the balance study's offline metric): which clusters are
rare, which train cluster a held-out event belongs to, and the errors of a trained policy."""

import collections

import jax
import numpy as np
import pytest

from wallwm_jax.data.event_index import EventIndex, load_event_index, load_for_training
from wallwm_jax.evaluation.clusters import ClusterEvaluator, cluster_of_event_type, rare_clusters


def test_rare_clusters_are_the_smallest_third():
    # sizes: c0 5, c1 1, c2 3, c3 1, c4 0 (absent), c5 2 -> five present, ceil(5/3) = 2
    cluster = np.repeat([0, 1, 2, 3, 5], [5, 1, 3, 1, 2])
    assert rare_clusters(cluster) == [1, 3]
    assert rare_clusters(cluster, fraction=0.5) == [1, 3, 5]
    assert rare_clusters(cluster, fraction=1.0) == [0, 1, 2, 3, 5]
    with pytest.raises(ValueError, match="fraction"):
        rare_clusters(cluster, fraction=0.0)


def test_event_type_takes_its_majority_cluster():
    n = 6
    table = EventIndex(episode=np.arange(n), event=np.zeros(n, np.int64),
                       start=np.zeros(n, np.int64), end=np.ones(n, np.int64),
                       task=np.array(["push"] * 4 + ["reach"] * 2),
                       phase=np.array(["grasp", "grasp", "grasp", "move", "move", "move"]),
                       cluster=np.array([2, 2, 7, 7, 1, 4]))
    assert cluster_of_event_type(table) == {("push", "grasp"): 2, ("push", "move"): 7,
                                            ("reach", "move"): 1}  # a tie: the lower id


def test_errors_by_cluster_of_a_trained_policy(trained_policies, tiny_dataset):
    policy = trained_policies["event"]
    config = policy.config
    evaluator = ClusterEvaluator(config)
    train = load_for_training(tiny_dataset, "train", int(config.data.num_clusters))
    held = load_event_index(tiny_dataset, "val")
    # Every held-out event is sampled at its first and middle step (one sample if those
    # coincide), and carries the majority train cluster of its (task, phase).
    majority = {}
    for key in set(zip(train.task, train.phase, strict=True)):
        votes = collections.Counter(c for t, p, c in zip(train.task, train.phase,
                                                          train.cluster, strict=True)
                                    if (t, p) == key)
        majority[key] = min(votes, key=lambda c: (-votes[c], c))
    expected = []
    for row in range(len(held)):
        key = (held.task[row], held.phase[row])
        if key in majority:
            start, end = int(held.start[row]), int(held.end[row])
            expected += [majority[key]] * len({start, (start + end - 1) // 2})
    assert evaluator.cluster.tolist() == expected
    sizes = np.bincount(train.cluster)
    common = [c for c in range(len(sizes)) if sizes[c] and c not in evaluator.rare]
    assert max(sizes[evaluator.rare]) <= min(sizes[common])

    out = evaluator(policy.result["params"])
    assert out == evaluator(policy.result["params"])  # same samples, same noise
    per_cluster = {int(k.rsplit("cluster", 1)[1]): v for k, v in out.items()
                   if "_cluster" in k}
    assert set(per_cluster) == set(expected)
    counts = collections.Counter(expected)
    rare = [c for c in per_cluster if c in evaluator.rare]
    if rare:
        np.testing.assert_allclose(
            out["val/action_mse_rare"],
            sum(per_cluster[c] * counts[c] for c in rare) / sum(counts[c] for c in rare),
            rtol=1e-5)
    # Other params, other errors: the number is the model's, not a constant.
    shifted = jax.tree.map(lambda p: p * 0.5, policy.result["params"])
    assert evaluator(shifted) != out


def test_cluster_errors_are_in_the_training_normalisation(tiny_config):
    """With position targets the action errors are measured in the targets' normalisation, as
    training and `val/action_mse` measure them (not the recorded actions' statistics)."""
    from wallwm_jax.data.pipeline import make_pipeline
    from wallwm_jax.data.statistics import load_norm_stats

    tiny_config.data.action_target_gain = 10.0
    tiny_config.batch_size = 8
    evaluator = ClusterEvaluator(tiny_config)
    val = make_pipeline(tiny_config.data, global_batch=8, seed=0, split="val").sampler
    recorded = load_norm_stats(tiny_config.data.data_dir)["action"]
    assert not np.allclose(val.norm_stats["action"]["std"], recorded["std"])  # targets differ
    # The evaluator's first sample: the first held-out event of a type the train split shows,
    # at its first step.
    train = load_for_training(tiny_config.data.data_dir, "train",
                              int(tiny_config.data.num_clusters))
    held = load_event_index(tiny_config.data.data_dir, "val")
    types = cluster_of_event_type(train)
    row = next(r for r in range(len(held)) if (held.task[r], held.phase[r]) in types)
    e, k, t = int(held.episode[row]), int(held.event[row]), int(held.start[row])
    want = val.make_sample(val.source[e], k, t)["actions"]
    np.testing.assert_allclose(np.asarray(evaluator._batches[0].actions[0]), want, rtol=1e-6)
    # Given the run's statistics (as the training loop passes them), it uses them as they are.
    given = ClusterEvaluator(tiny_config, norm_stats=val.norm_stats)
    assert given.sampler.norm_stats is val.norm_stats
    np.testing.assert_array_equal(np.asarray(given._batches[0].actions),
                                  np.asarray(evaluator._batches[0].actions))
