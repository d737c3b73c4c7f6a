"""`benchmarks/suite.py` runs end to end at tiny size (8 fake CPU devices) and writes the
table's figures: each one measured (positive, finite), the FLOP count the analytic one; no
timing thresholds."""

import json
import math
import os
import statistics
import sys

from experiments.pretrain import get_config
from wallwm_jax.throughput import newton_schulz_share, step_flops

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_suite_end_to_end_tiny(tmp_path, capsys, tiny_dataset):
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    try:
        import suite
    finally:
        sys.path.remove(os.path.join(REPO, "benchmarks"))
    out = tmp_path / "results.json"
    # With Muon as the train step's optimizer, the step time is the Muon step's. At the
    # dataset's image size (32 px) the data wait runs the row's compiled step, not a second one.
    report = suite.run_suite(sizes="tiny", steps=2, batch_size=8, latency_repeats=3,
                             out=str(out), optimizer="muon", rounds=2, data_dir=tiny_dataset,
                             image_size=32)
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    (row,) = report["rows"]
    # Measured durations are positive and finite (a skipped measurement would be 0 or None).
    for key in ("compile_s", "step_time_s", "muon_update_s", "muon_step_s",
                "checkpoint_blocking_s", "checkpoint_total_s", "event_p50_ms", "unified_p50_ms"):
        assert math.isfinite(row[key]) and row[key] > 0, (key, row[key])
    assert row["checkpoint_blocking_s"] <= row["checkpoint_total_s"]  # blocking is a part
    assert row["event_p50_ms"] <= row["event_p99_ms"]
    assert row["unified_p50_ms"] <= row["unified_p99_ms"]
    # The data wait is the real pipeline's over the given dataset (32 px), not synthetic.
    assert 0 <= row["data_wait_share_synthetic"] < 1
    # Timed as train.py times it: the device's wait is the part of the loop's batch wait after
    # the previous step was computed, so never more than the whole wait.
    assert 0 <= row["data_wait_share"] <= row["data_queue_share"] < 1
    assert row["data_wait_image_size"] == 32 and tiny_dataset in row["data_wait_source"]
    assert math.isfinite(row["data_wait_step_s"]) and row["data_wait_step_s"] > 0
    assert row["optimizer"] == "muon" and row["muon_step_s"] == row["step_time_s"]
    # Ratios are taken within each alternating round, then the median over rounds.
    rounds = row["round_times_s"]
    assert [len(v) for v in rounds.values()] == [2, 2, 2]
    assert row["muon_share"] == statistics.median(
        u / m for u, m in zip(rounds["muon_update"], rounds["muon"], strict=True))
    assert row["muon_vs_adamw"] == statistics.median(
        m / a for m, a in zip(rounds["muon"], rounds["adamw"], strict=True))
    assert row["step_time_s"] == statistics.median(rounds["muon"])
    assert (row["host_share_after"] < 0) == ("host_share_note" in row)  # never clamped
    # The FLOP count MFU uses is the analytic one for this config, not XLA's estimate.
    config = get_config("size=tiny,mode=event")
    config.batch_size, config.optimizer.name = 8, "muon"
    config.data.image_size = config.model.image_size = 32
    assert row["flops_per_step"] == step_flops(config) > 0
    assert row["ns_share_b8"] == newton_schulz_share(config, 8) > row["ns_share_b64"]
    assert list(row["ns_under_2pct_batch"]) == ["1", "8", "64"]
    assert row["dtype"] == "float32" and row["attention"] == "xla"  # 'auto' on CPU
    printed = capsys.readouterr().out
    assert "| size |" in printed and "| tiny |" in printed
