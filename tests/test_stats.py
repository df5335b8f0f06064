"""Intervals of every reported share and difference (knowpack.evaluate.stats)."""

from __future__ import annotations

import pytest

from knowpack.evaluate import stats


def test_wilson_matches_published_values():
    assert stats.wilson(5, 10)["ci95"] == pytest.approx([0.236593, 0.763407], abs=1e-5)
    assert stats.wilson(0, 10)["ci95"] == pytest.approx([0.0, 0.277533], abs=1e-5)
    assert stats.wilson(10, 10)["ci95"] == pytest.approx([0.722467, 1.0], abs=1e-5)
    assert stats.wilson(0, 0)["ci95"] is None


def test_mcnemar_exact():
    assert stats.mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert stats.mcnemar_exact(3, 3) == 1.0 and stats.mcnemar_exact(0, 0) == 1.0
    assert stats.mcnemar_exact(1, 9) == pytest.approx(2 * (1 + 10) / 1024)


def test_paired_difference_is_paired_and_reproducible():
    before = [1] * 60 + [0] * 40
    same = stats.paired_difference(before, before)
    assert same["ci95"] == [0.0, 0.0] and same["mcnemar_p"] == 1.0 and same["lost"] == same["gained"] == 0
    after = [0] * 10 + [1] * 50 + [0] * 40  # ten questions lost, none gained
    d = stats.paired_difference(before, after)
    assert d["ci95"][1] < 0 and d["lost"] == 10 and d["gained"] == 0 and d["mcnemar_p"] < 0.01
    assert d == stats.paired_difference(before, after)  # seeded: the same interval every run
    # an unpaired view of the same accuracies (0.6 vs 0.5) could not tell this apart from noise
    assert stats.wilson(60, 100)["ci95"][0] < stats.wilson(50, 100)["ci95"][1]
    with pytest.raises(ValueError, match="same units"):
        stats.paired_difference([1, 0], [1])


def test_cluster_share_keeps_a_units_answers_together():
    # 20 facts x 10 prompts: whole facts right or wrong, so the effective sample is 20, not 200
    correct, totals = [10] * 10 + [0] * 10, [10] * 20
    clustered = stats.cluster_share(correct, totals)["ci95"]
    naive = stats.wilson(100, 200)["ci95"]
    assert clustered[0] < naive[0] and clustered[1] > naive[1]
    assert stats.cluster_share([], [])["ci95"] is None


def test_seeds_interval_is_a_t_interval():
    r = stats.seeds_interval([1.0, 2.0, 3.0])
    assert r["mean"] == 2.0 and r["n"] == 3
    assert r["ci95"] == pytest.approx([2 - 4.303 / 3 ** 0.5, 2 + 4.303 / 3 ** 0.5], abs=1e-3)
    assert stats.seeds_interval([0.5])["ci95"] is None and stats.seeds_interval([])["mean"] is None
