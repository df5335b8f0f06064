"""Node selection: vote counting on hand-made scores, deterministic ties, k, strategies, node files."""

from __future__ import annotations

import json

import pytest
import torch

from knowpack.errors import InputError, KnowpackError
from knowpack.methods.loki.select import STRATEGIES, load_nodes, rows_per_layer, save_nodes, select_nodes


def test_k_is_exact_floor():
    assert rows_per_layer(10, 4096) == 409
    assert rows_per_layer(29, 100) == 29  # 0.29 * 100 is 28.999... in floats
    assert rows_per_layer(100, 8) == 8
    assert rows_per_layer(12.5, 8) == 1


def test_k_zero_error_names_the_fix():
    with pytest.raises(KnowpackError, match=r"model too small for q=1: hidden size 32 gives 0 rows per layer; "
                                            r"raise q to at least 3\.13") as info:
        rows_per_layer(1, 32)
    assert rows_per_layer(3.13, 32) == 1  # the suggested q does give one row
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("q", [0, -1, 101, float("nan"), True])
def test_bad_q(q):
    with pytest.raises(KnowpackError, match="q must be"):
        select_nodes(torch.zeros(1, 1, 10), q)


def test_layer_balanced_lowest_votes():
    # D = 10, q = 20 -> k = 2. Layer 0: prompts vote {1, 2}, {1, 3}, {1, 2} -> rows 1 (3 votes), 2 (2 votes).
    scores = torch.zeros(3, 2, 10)
    scores[:, 0] = 5.0
    scores[0, 0, [1, 2]] = torch.tensor([-3.0, -2.0])
    scores[1, 0, [1, 3]] = torch.tensor([-1.0, -4.0])
    scores[2, 0, [2, 1]] = torch.tensor([-9.0, -8.0])
    # Layer 1: ascending signed scores, so rows 0 and 1 are lowest for every prompt.
    scores[:, 1] = torch.arange(10.0)
    assert select_nodes(scores, 20) == [[1, 2], [0, 1]]


def test_layer_balanced_highest_votes():
    scores = torch.arange(10.0).repeat(3, 2, 1)  # [3, 2, 10]
    scores[:, 1] = -scores[:, 1]
    assert select_nodes(scores, 30, "layer_balanced_highest") == [[7, 8, 9], [0, 1, 2]]
    assert select_nodes(scores, 30) == [[0, 1, 2], [7, 8, 9]]


def test_ties_broken_by_mean_then_index():
    # k = 1 of D = 4. Prompt 0 votes row 0, prompt 1 votes row 2: one vote each.
    scores = torch.tensor([[[-5.0, 1.0, 0.0, 1.0]],
                           [[0.0, 1.0, -4.0, 1.0]]])
    # Means: row 0 = -2.5, row 2 = -2.0 -> lowest mean wins.
    assert select_nodes(scores, 25) == [[0]]
    # For "highest", votes go to rows 1 and 3 (tied within each prompt: the lower index, row 1, gets both).
    assert select_nodes(scores, 25, "layer_balanced_highest") == [[1]]
    # Exactly equal votes and means: the lower index wins, every time.
    tied = torch.tensor([[[0.0, 3.0, -1.0, -1.0]], [[0.0, 3.0, -1.0, -1.0]]])
    assert select_nodes(tied, 25) == [[2]]
    assert all(select_nodes(tied, 50) == [[2, 3]] for _ in range(5))
    # Within a prompt, equal scores vote for lower indices first.
    flat = torch.zeros(3, 1, 8)
    assert select_nodes(flat, 25) == [[0, 1]]
    assert select_nodes(flat, 25, "layer_balanced_highest") == [[0, 1]]


def test_votes_beat_mean():
    # Row 3 is lowest on one prompt by a mile (best mean) but row 1 is among the lowest on two prompts.
    scores = torch.tensor([[[0.0, -1.0, 0.0, 0.0]],
                           [[0.0, -1.0, 0.0, 0.0]],
                           [[0.0, 0.0, 0.0, -100.0]]])
    assert select_nodes(scores, 25) == [[1]]


def test_global_strategies_group_by_layer():
    # L = 2, D = 4, q = 25 -> k_total = 2 over all 8 rows. Both lowest rows sit in layer 1.
    scores = torch.tensor([[[1.0, 2.0, 3.0, 4.0], [-1.0, 0.0, -2.0, 5.0]]])
    assert select_nodes(scores, 25, "global_lowest") == [[], [0, 2]]
    assert select_nodes(scores, 25, "global_highest") == [[3], [3]]
    # Layer-balanced takes k = 1 from each layer instead.
    assert select_nodes(scores, 25) == [[0], [2]]
    with pytest.raises(KnowpackError, match="2 layers x hidden size 4"):
        select_nodes(scores, 10, "global_lowest")


def test_random_is_seeded_and_balanced():
    scores = torch.randn(2, 3, 50)
    a = select_nodes(scores, 10, "random", seed=1)
    assert a == select_nodes(scores, 10, "random", seed=1)
    assert a != select_nodes(scores, 10, "random", seed=2)
    assert [len(x) for x in a] == [5, 5, 5] and all(x == sorted(set(x)) for x in a)
    # Random needs no prompts, only the shape.
    assert len(select_nodes(torch.empty(0, 3, 50), 10, "random")) == 3


def test_shapes_and_values_checked():
    with pytest.raises(KnowpackError, match="unknown selection strategy 'lowest'"):
        select_nodes(torch.zeros(1, 1, 10), 10, "lowest")
    with pytest.raises(KnowpackError, match=r"\[N, L, D\]"):
        select_nodes(torch.zeros(1, 10), 10)
    with pytest.raises(KnowpackError, match="NaN"):
        select_nodes(torch.full((1, 1, 10), float("nan")), 10)
    with pytest.raises(KnowpackError, match="at least one prompt"):
        select_nodes(torch.zeros(0, 1, 10), 10)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_gives_sorted_unique_lists(strategy):
    scores = torch.randn(4, 3, 40, generator=torch.Generator().manual_seed(0))
    layers = select_nodes(scores, 10, strategy)
    assert len(layers) == 3
    assert all(x == sorted(set(x)) and all(0 <= i < 40 for i in x) for x in layers)
    assert sum(len(x) for x in layers) == 12
    assert all(isinstance(i, int) for x in layers for i in x)


def test_node_file_round_trip(tmp_path):
    path = save_nodes(tmp_path / "nodes.json", [[1, 3], [0, 2]], 10, "layer_balanced_lowest",
                      {"scores": "s.safetensors", "k": 2})
    raw = json.loads(path.read_text())
    assert list(raw) == ["q", "strategy", "scores", "k", "layers"]
    assert raw["layers"] == [[1, 3], [0, 2]]
    assert load_nodes(path) == raw
    with pytest.raises(KnowpackError, match="overwrite"):
        save_nodes(tmp_path / "x.json", [[0]], 10, "random", {"layers": []})


@pytest.mark.parametrize("obj,field", [
    ({"strategy": "random", "layers": [[0]]}, "q"),
    ({"q": 10, "strategy": "nope", "layers": [[0]]}, "strategy"),
    ({"q": 10, "strategy": "random", "layers": [[2, 1]]}, "layers"),
    ({"q": 10, "strategy": "random", "layers": [[-1]]}, "layers"),
    ({"q": 10, "strategy": "random", "layers": [0]}, "layers"),
])
def test_bad_node_files(tmp_path, obj, field):
    path = tmp_path / "n.json"
    path.write_text(json.dumps(obj))
    with pytest.raises(InputError) as info:
        load_nodes(path)
    assert info.value.field == field
    with pytest.raises(InputError, match="not found"):
        load_nodes(tmp_path / "missing.json")
