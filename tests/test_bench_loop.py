"""`medloop bench loop` at a tiny size: one worker process retrains, evaluates, promotes
and proposes; empty jobs and review latencies are measured; the table is written."""

from __future__ import annotations

import pandas as pd

from pipeline.bench.loop import main


def test_bench_loop_runs_end_to_end_at_a_tiny_size(tmp_path, capsys):
    out = tmp_path / "loop.csv"
    assert main(["--slices", "12", "--size", "64", "--epochs", "1", "--holdout", "4",
                 "--pool", "4", "--noops", "10", "--reviews", "2", "--floor", "0", "--data-dir",
                 str(tmp_path), "--out", str(out)]) == 0

    table = pd.read_csv(out).set_index("metric")["value"]
    assert 0 < table["retrain -> promoted"] <= table["retrain -> proposals refreshed"]
    assert table["proposals written"] == 4  # every pool slice got a fresh proposal
    assert 0.0 <= table["promoted model: holdout Dice"] <= 1.0
    assert table["worker: per empty job (median gap between finishes)"] > 0
    assert table["worker: empty-job throughput"] > 0
    for condition in ("idle", "training"):
        assert table[f"next item, lease + load image and mask, {condition}: median"] > 0
    runs = pd.read_csv(tmp_path / "loop_review.csv")
    assert runs.groupby("condition").size().to_dict() == {"idle": 2, "training": 2}
    assert runs["item"].is_unique  # each item accepted, so the queue moved
    assert "retrain -> proposals refreshed" in capsys.readouterr().out
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]  # the temporary store is gone
