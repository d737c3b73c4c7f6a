"""`benchmarks/suite.py` runs end to end at tiny size (8 fake CPU devices) and writes the
table's figures; no timing thresholds."""

import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_suite_end_to_end_tiny(tmp_path, capsys):
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    try:
        import suite
    finally:
        sys.path.remove(os.path.join(REPO, "benchmarks"))
    out = tmp_path / "results.json"
    report = suite.run_suite(sizes="tiny", steps=2, batch_size=8, latency_repeats=3,
                             out=str(out))
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    (row,) = report["rows"]
    for key in ("compile_s", "step_time_s", "flops_per_step", "muon_share", "data_wait_share",
                "checkpoint_blocking_s", "event_p50_ms", "event_p99_ms", "unified_p50_ms",
                "unified_p99_ms"):
        assert row[key] >= 0, key
    assert row["dtype"] == "float32" and row["attention"] == "xla"  # 'auto' on CPU
    printed = capsys.readouterr().out
    assert "| size |" in printed and "| tiny |" in printed
