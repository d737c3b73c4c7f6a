"""Grain event pipeline: sample contents, determinism, worker-count independence, resume,
Grain's read-ahead bounded by the config."""

import time

import jax
import numpy as np
import pytest
from PIL import Image

from wallwm_jax.data.batches import EventBatch, abstract_batch
from wallwm_jax.data.episodes import open_dataset
from wallwm_jax.data.pipeline import (
    duration_bin,
    make_pipeline,
    read_options,
    scan_events,
    to_event_batch,
)
from wallwm_jax.data.sampler import EventSampler


def test_duration_bins_use_upper_edges():
    edges = (1, 2, 4, 8)
    assert [duration_bin(r, edges) for r in (1, 2, 3, 4, 5, 8, 9, 100)] == [0, 1, 2, 2, 3, 3, 3, 3]


def test_event_index_covers_every_event(tiny_dataset):
    source = open_dataset(tiny_dataset, "train")
    index = scan_events(source)
    total = sum(len(source[e]["events/start"]) for e in range(len(source)))
    assert len(index) == total
    assert np.all(index.end > index.start)


def test_samples_hold_the_rest_of_their_event(tiny_config):
    cfg = tiny_config.data
    cfg.augment.enabled = False  # compare frames pixel for pixel
    pipe = make_pipeline(cfg, global_batch=8, seed=0)
    source, sampler = pipe.sampler.source, pipe.sampler
    for i in range(20):
        row, t, _ = sampler.draw(i)
        e, k = int(sampler.index.episode[row]), int(sampler.index.event[row])
        end = int(sampler.index.end[row])
        sample = sampler(i)
        ep = source[e]
        n_real = min(end - t, cfg.max_event_len)
        assert sample["action_mask"].sum() == n_real
        assert not sample["action_mask"][n_real:].any()
        np.testing.assert_array_equal(sample["image"], ep["steps/observation/image"][t])
        raw = ep["steps/action"][t:t + n_real]
        stats = sampler.norm_stats["action"]
        np.testing.assert_allclose(sample["actions"][:n_real] * stats["std"] + stats["mean"], raw,
                                   rtol=1e-4, atol=1e-4)
        assert np.all(sample["actions"][n_real:] == 0)
        assert sample["duration_bin"].tolist() == [duration_bin(end - t,
                                                                tuple(cfg.duration_bins))]
        last = Image.fromarray(np.asarray(ep["steps/observation/image"][end - 1]))
        np.testing.assert_array_equal(sample["end_image"], np.asarray(last.resize(
            (cfg.world_size, cfg.world_size), Image.BILINEAR)))  # the event's end, resized
        assert sample["caption"].shape == (1, cfg.caption_len)
        assert sampler.tokenizer.decode(sample["caption"][0]) == ep["events/caption"][k]
        assert not sample["action_events"].any()


def _draw(sampler, i):
    """The (episode, event, step) that sample i was drawn at."""
    row, t, _ = sampler.draw(i)
    return int(sampler.index.episode[row]), int(sampler.index.event[row]), t


def test_unified_samples_cross_event_boundaries_with_staircase_captions(tiny_config):
    cfg = tiny_config.data
    cfg.layout, cfg.max_captions, cfg.max_event_len = "unified", 2, 24
    sampler = make_pipeline(cfg, global_batch=8, seed=1).sampler
    crossed = 0
    for i in range(40):
        e, k, t = _draw(sampler, i)
        ep, sample = sampler.source[e], sampler(i)
        ends, starts = ep["events/end"], ep["events/start"]
        steps = np.arange(t, min(t + cfg.max_event_len, len(ep["steps/action"])))
        event_of = np.searchsorted(ends, steps, side="right")
        keep = event_of - k < 2  # steps of events k and k + 1 only
        n = int(keep.sum())
        assert sample["action_mask"].sum() == n and sample["action_mask"][:n].all()
        np.testing.assert_array_equal(sample["action_events"][:n], event_of[:n] - k)
        assert np.all(np.diff(sample["action_events"]) >= 0)
        stats = sampler.norm_stats["action"]
        np.testing.assert_allclose(sample["actions"][:n] * stats["std"] + stats["mean"],
                                   ep["steps/action"][t:t + n], rtol=1e-4, atol=1e-4)
        assert sampler.tokenizer.decode(sample["caption"][0]) == ep["events/caption"][k]
        edges = tuple(cfg.duration_bins)
        assert sample["duration_bin"][0] == duration_bin(int(ends[k]) - t, edges)
        if np.any(event_of[:n] == k + 1):
            crossed += 1
            assert sampler.tokenizer.decode(sample["caption"][1]) == ep["events/caption"][k + 1]
            assert sample["duration_bin"][1] == duration_bin(
                int(ends[k + 1] - starts[k + 1]), edges)
        else:
            assert not sample["caption"][1].any()
    assert crossed > 0


def test_chunk_samples_ignore_events(tiny_config):
    cfg = tiny_config.data
    cfg.layout, cfg.max_captions = "chunk", 0
    sampler = make_pipeline(cfg, global_batch=8, seed=2).sampler
    for i in range(10):
        e, k, t = _draw(sampler, i)
        ep, sample = sampler.source[e], sampler(i)
        n = min(cfg.max_event_len, len(ep["steps/action"]) - t)
        assert sample["action_mask"].sum() == n
        assert sample["caption"].shape == (0, cfg.caption_len)
        assert sample["duration_bin"].shape == (0,) and not sample["action_events"].any()


@pytest.mark.parametrize("layout,slots", [("unified", 1), ("event", 2), ("chunk", 1),
                                          ("steps", 1)])
def test_layout_and_caption_slots_must_agree(tiny_config, layout, slots):
    cfg = tiny_config.data
    cfg.layout, cfg.max_captions = layout, slots
    with pytest.raises(ValueError, match="data.layout|data.max_captions"):
        make_pipeline(cfg, global_batch=8, seed=0)


def test_batches_are_deterministic_and_independent_of_workers(tiny_config):
    cfg = tiny_config.data
    a = make_pipeline(cfg, global_batch=8, seed=3)
    first = [next(a) for _ in range(2)]
    cfg.num_workers = 1
    b = make_pipeline(cfg, global_batch=8, seed=3)
    try:
        second = [next(b) for _ in range(2)]
    finally:
        b.iterator.close()
    for x, y in zip(first, second, strict=True):
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(x), jax.tree.leaves(y),
                                strict=True):
            np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
    other = next(make_pipeline(tiny_config.data, global_batch=8, seed=4))
    assert not np.array_equal(other.actions, first[0].actions)


def test_iterator_state_resumes_exactly(tiny_config):
    cfg = tiny_config.data
    straight = make_pipeline(cfg, global_batch=8, seed=5)
    want = [next(straight) for _ in range(4)]
    first = make_pipeline(cfg, global_batch=8, seed=5)
    next(first), next(first)
    state = first.get_state()
    resumed = make_pipeline(cfg, global_batch=8, seed=5)
    resumed.iterator.set_state(state)
    for expected in want[2:]:
        got = next(resumed)
        np.testing.assert_array_equal(got.actions, expected.actions)
        np.testing.assert_array_equal(got.obs.image, expected.obs.image)


def test_wrong_image_size_names_the_field(tiny_config):
    cfg = tiny_config.data
    cfg.image_size = 48
    pipe = make_pipeline(cfg, global_batch=8, seed=0)
    with pytest.raises(ValueError, match="steps/observation/image"):
        next(pipe)


def test_pipeline_yields_event_batches(tiny_config):
    batch = next(make_pipeline(tiny_config.data, global_batch=8, seed=0))
    assert isinstance(batch, EventBatch) and to_event_batch(batch) is batch
    assert batch.obs.image.shape == (8, 32, 32, 3) and batch.obs.image.dtype == np.uint8
    assert batch.obs.instruction.shape == (8, tiny_config.data.instruction_len)
    assert batch.actions.shape == (8, tiny_config.data.max_event_len, 4)
    # The real batch has exactly the shapes the AOT path lowers with.
    config = tiny_config.copy_and_resolve_references()
    config.batch_size = 8
    want = abstract_batch(config)
    for got_leaf, want_leaf in zip(jax.tree.leaves(batch), jax.tree.leaves(want), strict=True):
        assert got_leaf.shape == want_leaf.shape and got_leaf.dtype == want_leaf.dtype


def test_augmentation_is_seeded_train_only_and_checked(tiny_config):
    cfg = tiny_config.data
    plain = tiny_config.copy_and_resolve_references().data
    plain.augment.enabled = False
    aug = make_pipeline(cfg, global_batch=8, seed=0).sampler
    raw = make_pipeline(plain, global_batch=8, seed=0).sampler
    changed = 0
    for i in range(6):
        a, r = aug(i), raw(i)
        assert a["image"].shape == r["image"].shape and a["image"].dtype == np.uint8
        np.testing.assert_array_equal(a["image"], aug(i)["image"])  # same index, same pixels
        np.testing.assert_array_equal(a["actions"], r["actions"])  # only the image changes
        np.testing.assert_array_equal(a["end_image"], r["end_image"])
        changed += not np.array_equal(a["image"], r["image"])
        # Augmented frames stay close to the original (a mild crop and jitter).
        assert np.abs(a["image"].astype(float).mean() - r["image"].astype(float).mean()) < 60
    assert changed == 6
    val = make_pipeline(cfg, global_batch=8, seed=0, split="val").sampler
    val_plain = make_pipeline(plain, global_batch=8, seed=0, split="val").sampler
    np.testing.assert_array_equal(val(0)["image"], val_plain(0)["image"])
    cfg.augment.crop_scale = 0.0
    with pytest.raises(ValueError, match="data.augment.crop_scale"):
        make_pipeline(cfg, global_batch=8, seed=0)


@pytest.mark.parametrize("mode", ["mean_std", "quantile"])
def test_normalisation_round_trips(tiny_config, mode):
    from wallwm_jax.data import statistics

    cfg = tiny_config.data
    cfg.norm_mode, cfg.augment.enabled = mode, False
    sampler = make_pipeline(cfg, global_batch=8, seed=0).sampler
    e, _, t = _draw(sampler, 0)
    sample, ep = sampler(0), sampler.source[e]
    n = int(sample["action_mask"].sum())
    raw = ep["steps/action"][t:t + n]
    back = statistics.unnormalize(sample["actions"][:n], sampler.norm_stats["action"], mode)
    stats = sampler.norm_stats["action"]
    inside = np.all((raw >= stats["q01"]) & (raw <= stats["q99"]), axis=-1)
    if mode == "quantile":  # values beyond q01..q99 are clipped to +-1 by design
        assert np.all(np.abs(sample["actions"][:n]) <= 1.0)
        raw, back = raw[inside], back[inside]
    np.testing.assert_allclose(back, raw, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def k3_dataset(tiny_dataset, tmp_path_factory):
    """The tiny dataset with its train event index rebuilt with 3 clusters (by the CLI)."""
    import shutil

    from wallwm_jax.data import event_index

    copy = shutil.copytree(tiny_dataset, tmp_path_factory.mktemp("k3") / "dataset").as_posix()
    event_index.build_and_save(copy, clusters=3)
    return copy


def test_balanced_sampling_realises_the_target_cluster_frequencies(tiny_config, k3_dataset):
    from wallwm_jax.data import balance

    cfg = tiny_config.data
    cfg.data_dir = k3_dataset
    cfg.balance_alpha, cfg.num_clusters = 0.0, 3  # every cluster equally often
    pipe = make_pipeline(cfg, global_batch=8, seed=0)
    sampler, report = pipe.sampler, pipe.cluster_report()
    sizes = np.bincount(sampler.cluster)
    assert sizes.min() != sizes.max()  # unequal clusters, so balancing has work to do
    np.testing.assert_allclose(report["target_frequencies"], 1 / 3, atol=1e-12)
    rows = [sampler.draw(i)[0] for i in range(3000)]
    realised = balance.cluster_report(sampler.cluster, sampler.event_probs, rows)
    assert realised["kl_realised_target"] < 0.01, realised
    # Against the data's own frequencies (alpha = 1) the same draws are far off.
    uniform = balance.event_sampling_probabilities(sampler.cluster, 1.0)
    assert balance.cluster_report(sampler.cluster, uniform, rows)["kl_realised_target"] > 0.02
    assert {int(sampler(i)["cluster"]) for i in range(12)} <= set(range(3))


def test_mixture_draws_datasets_by_weight(tiny_config):
    cfg = tiny_config.data
    cfg.mixture = ((cfg.data_dir, 3.0), (cfg.data_dir, 1.0))
    cfg.balance_alpha = None
    pipe = make_pipeline(cfg, global_batch=8, seed=0)
    assert len(pipe.samplers) == 2
    fn = pipe.iterator  # noqa: F841  (the Grain pipeline runs the mixture sampler)
    from wallwm_jax.data.pipeline import MixtureSampler

    mix = MixtureSampler(pipe.samplers, np.asarray([3.0, 1.0]), seed=0)
    share = np.mean([int(mix(i)["dataset"]) == 0 for i in range(400)])
    assert abs(share - 0.75) < 0.06, share
    assert next(pipe).actions.shape[0] == 8  # the pipeline runs the mixture


@pytest.mark.parametrize("field,value,match", [
    ("balance_alpha", -0.5, "data.balance_alpha"),
    ("balance_alpha", float("nan"), "data.balance_alpha"),
    ("mixture", (("a", -1.0),), r"data.mixture\[0\]"),
    ("mixture", (("a", 0.0), ("b", 0.0)), "all zero"),
    ("num_clusters", 0, "data.num_clusters"),
])
def test_bad_sampling_settings_are_rejected_by_name(tiny_config, field, value, match):
    setattr(tiny_config.data, field, value)
    with pytest.raises(ValueError, match=match):
        make_pipeline(tiny_config.data, global_batch=8, seed=0)


def test_pipeline_tracks_realised_cluster_frequencies(tiny_config, k3_dataset):
    cfg = tiny_config.data
    cfg.data_dir = k3_dataset
    cfg.balance_alpha, cfg.num_clusters = 0.0, 3
    pipe = make_pipeline(cfg, global_batch=8, seed=0)
    assert pipe.sampling_metrics() == {}
    for _ in range(40):
        next(pipe)  # the pipeline counts the clusters it draws
    assert pipe._counts.sum() == 40 * 8
    metrics = pipe.sampling_metrics()
    assert abs(metrics["data/effective_clusters"] - 3.0) < 1e-9
    assert 0.0 <= metrics["data/cluster_kl"] < 0.05, metrics
    pipe._counts[:] = [1000, 0, 0]  # everything from one cluster: far from uniform
    assert pipe.sampling_metrics()["data/cluster_kl"] > 0.5


def test_batch_checked_against_the_config_names_the_field(tiny_config):
    from wallwm_jax.data.batches import check_batch

    batch = next(make_pipeline(tiny_config.data, global_batch=8, seed=0))
    config = tiny_config.copy_and_resolve_references()
    config.batch_size = 8
    check_batch(batch, abstract_batch(config))
    config.data.max_event_len = 16
    with pytest.raises(ValueError, match=r"field 'actions' has shape \(8, 32, 4\).*\(8, 16, 4\)"):
        check_batch(batch, abstract_batch(config))


def test_samples_sharing_an_episode_equal_samples_made_fresh(tiny_config):
    """What samples of one episode share (normalised targets, event-end frames, tokens) is
    computed once and kept with the cached episode; a sample drawn through that cache equals
    one made from a fresh read, also after the earlier samples' arrays were overwritten."""
    tiny_config.data.layout, tiny_config.data.max_captions = "unified", 2
    cached = make_pipeline(tiny_config.data, global_batch=8, seed=2).sampler
    fresh = make_pipeline(tiny_config.data, global_batch=8, seed=2).sampler
    fresh.cache_size = 0  # every sample reads its episode and derives everything again
    episodes = set()
    for i in range(24):
        got, want = cached(i), fresh(i)
        episodes.add(int(cached.index.episode[cached.draw(i)[0]]))
        assert got.keys() == want.keys()
        for key in got:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
            if np.ndim(got[key]):  # a consumer writing into its sample leaves the cache be
                got[key][...] = 0
    assert len(episodes) < 24  # episodes were shared, so the cache was exercised


def test_decoded_frames_stay_within_their_budget(tiny_config):
    """Decoded frames are kept with their cached episode up to `frame_cache_bytes`; evicting
    an episode releases its frames from the count."""
    sampler = make_pipeline(tiny_config.data, global_batch=8, seed=1).sampler
    frame_bytes = 32 * 32 * 3
    sampler.cache_size, sampler.frame_cache_bytes = 2, 5 * frame_bytes
    for i in range(40):
        sampler(i)
        held = sum(f.nbytes for _, derived in sampler._cache.values()
                   for f in derived["frames"].values())
        assert held == sampler._frame_bytes <= 5 * frame_bytes
    assert sampler._frame_bytes > 0 and len(sampler._cache) == 2


@pytest.mark.parametrize("layout,slots", [("event", 1), ("unified", 2), ("chunk", 0)])
def test_samples_without_an_episode_cache_equal_cached_ones(tiny_config, layout, slots):
    """Without an episode cache (a dataset far larger than it) a sample computes only its own
    steps' targets and keeps nothing; every field equals the cached path's, augmented too."""
    from wallwm_jax.data.sampler import make_sampler

    cfg = tiny_config.data
    cfg.layout, cfg.max_captions = layout, slots
    cached = make_sampler(cfg, cfg.data_dir, "train", seed=6, augment=True)
    cold = make_sampler(cfg, cfg.data_dir, "train", seed=6, augment=True)
    cold.cache_size = 0
    for i in range(12):
        a, b = cached(i), cold(i)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
            assert a[key].dtype == b[key].dtype, key
    assert len(cached._cache) > 0 and len(cold._cache) == 0


def test_read_options_come_from_the_config(tiny_config):
    tiny_config.data.read_threads, tiny_config.data.read_ahead = 3, 5
    options = read_options(tiny_config.data)
    assert (options.num_threads, options.prefetch_buffer_size) == (3, 5)


def test_one_batch_computes_at_most_read_ahead_more(tiny_config, monkeypatch):
    calls = []
    real = EventSampler.__call__
    monkeypatch.setattr(EventSampler, "__call__",
                        lambda self, i: calls.append(i) or real(self, i))
    cfg = tiny_config.data
    cfg.read_threads, cfg.read_ahead = 2, 3
    pipe = make_pipeline(cfg, global_batch=8, seed=0)
    next(pipe.iterator)
    # Grain's defaults would go on computing batches on 16 threads for seconds (4,000 samples
    # of this dataset in ~2 CPU-s); bounded, the count stops at (1 + read_ahead) batches.
    time.sleep(1.5)
    assert 8 <= len(calls) <= (1 + 3) * 8


def test_end_frames_are_resized_as_pil_resizes_an_array():
    """The sampler hands PIL the event-end frame without `Image.fromarray`'s wrapping; the
    pixels are PIL's bilinear resize of the array, bit for bit, at every size it meets."""
    from wallwm_jax.data.step_records import resize_rgb

    rng = np.random.default_rng(0)
    for side, size in ((32, 16), (64, 16), (48, 48), (224, 16), (50, 16)):
        frame = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        want = np.asarray(Image.fromarray(frame).resize((size, size), Image.BILINEAR))
        got = resize_rgb(frame[:, ::-1][:, ::-1], size)  # a strided view is taken too
        assert got.dtype == np.uint8 and got.shape == (size, size, 3)
        np.testing.assert_array_equal(got, want)


def test_concurrent_reads_share_the_cache_safely(tiny_config):
    """Grain's read threads call one sampler at once: with a 2-episode cache evicting all the
    time, every sample still equals a fresh read and the frame count stays exact."""
    import sys
    import threading

    sampler = make_pipeline(tiny_config.data, global_batch=8, seed=3).sampler
    fresh = make_pipeline(tiny_config.data, global_batch=8, seed=3).sampler
    fresh.cache_size = 0
    sampler.cache_size, sampler.frame_cache_bytes = 2, 6 * 32 * 32 * 3
    indices = list(range(48))
    want = {i: fresh(i) for i in indices}
    errors, got = [], {}

    def read(offset):
        try:
            for i in indices[offset:] + indices[:offset]:
                got[(offset, i)] = sampler(i)
        except Exception as e:  # noqa: BLE001  (reported by the assertion below)
            errors.append(repr(e))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=read, args=(k * 6,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors[:3]
    for (_, i), sample in got.items():
        for key in want[i]:
            np.testing.assert_array_equal(sample[key], want[i][key], err_msg=key)
    held = sum(f.nbytes for _, derived in sampler._cache.values()
               for f in derived["frames"].values())
    assert held == sampler._frame_bytes <= sampler.frame_cache_bytes
