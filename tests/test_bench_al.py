"""`medloop bench al --quick`: learning curves of every strategy against random, written as
CSV and PNG, with the summary table and the verdict printed."""

from __future__ import annotations

import pandas as pd
import pytest

from pipeline.active.strategies import STRATEGIES
from pipeline.cli import main as cli_main
from tests.conftest import RADIOMICS


def test_bench_al_quick_writes_curves_summary_and_plot(tmp_path, capsys):
    if not RADIOMICS.is_dir():
        pytest.skip("the shared radiomics data is not here (shared_volumes reads it)")
    datasets = ["radiomics", "mni152"]
    assert cli_main(["bench", "al", "--quick", "--out-dir", str(tmp_path)]) == 0

    curves = pd.read_csv(tmp_path / "al-curves.csv")
    assert set(curves.dataset) == set(datasets)
    ran = set(curves.strategy) - {"full data"}
    # the quick size runs without the FM: every other strategy but the cold start, which
    # is the first round of its own
    assert ran == set(STRATEGIES) - {"fm_disagreement", "cold_start"}
    assert curves.dice.between(0, 1).all()
    assert curves.groupby(["dataset", "strategy"]).seed.nunique().min() == 2
    rounds = curves[curves["round"] >= 0]
    assert rounds.groupby(["dataset", "strategy", "seed"]).labelled.is_monotonic_increasing.all()

    summary = pd.read_csv(tmp_path / "al-summary.csv")
    assert {"labels_to_95", "auc", "target_dice"} <= set(summary.columns)
    assert len(summary) == len(datasets) * len(ran)
    cold = pd.read_csv(tmp_path / "al-cold-start.csv")
    assert set(cold.first_round) == {"random", "cold_start"}
    png = (tmp_path / "al-curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    out = capsys.readouterr().out
    assert "recipe:" in out and "cold start, first round alone" in out
    assert "overall best" in out
    for ds in datasets:  # one verdict line each
        assert any(line.startswith(f"{ds}: ") and "labels" in line for line in out.splitlines())
