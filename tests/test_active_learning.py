"""Active learning: the selection strategies on data whose decision boundary is known, and two
rounds of the simulated labelling loop (bench/active_learning.py) end to end."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit, softmax

import bench.active_learning as al
from plankton_transfer.active import STRATEGIES, select
from plankton_transfer.errors import UserError

W, B = np.array([2.0, -1.0]), 0.5  # the known logistic model p(y=1 | x) = sigmoid(W.x + B)


def binary_pool(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two Gaussian classes either side of the line W.x + B = 0, and the model's probabilities."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.normal(size=(n, 2)) + np.where(y[:, None] == 1, 1.0, -1.0) * W / np.linalg.norm(W)
    p1 = expit(x @ W + B)
    return x, np.column_stack([1 - p1, p1])


def test_margin_picks_the_images_nearest_the_boundary():
    x, proba = binary_pool()
    picked, values = select("margin", 10, proba=proba)
    distance = np.abs(x @ W + B) / np.linalg.norm(W)
    assert set(picked) == set(np.argsort(distance)[:10])
    assert np.all(np.diff(values) >= 0)  # best (smallest margin) first
    assert np.allclose(values, np.abs(proba[picked, 1] - proba[picked, 0]))
    assert distance[picked].max() < np.median(distance) / 4


def test_margin_with_three_classes_is_the_gap_between_the_top_two():
    rng = np.random.default_rng(1)
    weights = np.array([[1.0, 0.0], [-0.5, 0.9], [-0.5, -0.9]])
    x = rng.normal(size=(300, 2)) * 2
    logits = x @ weights.T
    proba = softmax(logits, axis=1)
    picked, values = select("margin", 15, proba=proba)
    top2 = np.sort(proba, axis=1)[:, -2:]
    gap = top2[:, 1] - top2[:, 0]
    assert list(picked) == list(np.argsort(gap, kind="stable")[:15])
    assert np.allclose(values, gap[picked])
    logit_gap = np.sort(logits, axis=1)[:, -1] - np.sort(logits, axis=1)[:, -2]
    assert logit_gap[picked].max() < np.quantile(logit_gap, 0.1)  # all on a boundary between two classes


def test_least_confidence_entropy_and_margin_agree_with_two_classes():
    _, proba = binary_pool(seed=3)
    picks = {s: select(s, 25, proba=proba)[0] for s in ("least_confidence", "entropy", "margin")}
    assert list(picks["least_confidence"]) == list(picks["entropy"]) == list(picks["margin"])
    _, lc = select("least_confidence", 25, proba=proba)
    _, ent = select("entropy", 25, proba=proba)
    assert np.all(np.diff(lc) <= 0) and np.all(np.diff(ent) <= 0) and ent.max() <= np.log(2) + 1e-12


def corners(per_corner: int = 10, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], dtype=float)
    return np.concatenate([c + 0.3 * rng.normal(size=(per_corner, 2)) for c in centres])


def test_kcenter_picks_far_apart_points_away_from_the_labelled_ones():
    pool = corners()
    labelled = np.array([[0.0, 0.0], [0.1, -0.1]])  # the first corner is already labelled
    picked, values = select("kcenter", 3, features=pool, labelled_features=labelled)
    assert sorted(i // 10 for i in picked) == [1, 2, 3]  # one image from each unlabelled corner
    assert picked[0] // 10 == 3  # the farthest corner first
    assert np.all(np.diff(values) <= 1e-12) and values[-1] > 5  # greedy: distances never grow
    again, _ = select("kcenter", 3, features=pool.astype(np.float16), labelled_features=labelled)
    assert sorted(i // 10 for i in again) == [1, 2, 3]


def test_kcenter_without_labels_and_cluster_then_pick_cover_every_blob():
    pool = corners(seed=2)
    picked, _ = select("kcenter", 4, features=pool)
    assert sorted(i // 10 for i in picked) == [0, 1, 2, 3]
    picked, values = select("cluster", 4, features=pool, seed=5)
    assert sorted(i // 10 for i in picked) == [0, 1, 2, 3] and np.all(values < 1.5)
    assert list(select("cluster", 4, features=pool, seed=5)[0]) == list(picked)


def test_unknown_first_picks_the_highest_scores_and_breaks_ties_by_index():
    score = np.array([0.1, 0.9, 0.5, 0.9, 0.2, 0.9])
    picked, values = select("unknown_first", 3, unknown_score=score)
    assert list(picked) == [1, 3, 5] and list(values) == [0.9, 0.9, 0.9]
    assert list(select("unknown_first", 4, unknown_score=score)[0]) == [1, 3, 5, 2]


def test_ties_are_broken_by_the_lower_index_for_every_uncertainty_strategy():
    proba = np.full((6, 3), 1 / 3)
    for strategy in ("least_confidence", "margin", "entropy"):
        assert list(select(strategy, 3, proba=proba)[0]) == [0, 1, 2]


def test_random_is_seeded_and_never_repeats():
    _, proba = binary_pool()
    a, _ = select("random", 50, proba=proba, seed=7)
    b, _ = select("random", 50, proba=proba, seed=7)
    c, _ = select("random", 50, proba=proba, seed=8)
    assert list(a) == list(b) and list(a) != list(c)
    assert len(set(a)) == 50 and a.min() >= 0 and a.max() < len(proba)
    assert list(select("random", 5, features=np.zeros((200, 3)), seed=7)[0]) == list(a[:5])  # any pool input


@pytest.mark.parametrize("kwargs, message", [
    (dict(strategy="smallest_margin", n=1), "unknown selection strategy 'smallest_margin'; choose one of random"),
    (dict(strategy="margin", n=0), "at least 1"),
    (dict(strategy="margin", n=201), "n is 201 but the pool holds only 200"),
    (dict(strategy="margin", n=2.5), "whole number"),
    (dict(strategy="margin", n=True), "whole number"),
    (dict(strategy="margin", n=1, proba=None), "needs proba"),
    (dict(strategy="kcenter", n=1, features=None), "needs features"),
    (dict(strategy="unknown_first", n=1, unknown_score=None), "needs unknown_score"),
    (dict(strategy="margin", n=1, proba=np.log(np.full((4, 2), 0.5))), "negative, NaN or infinite"),
    (dict(strategy="margin", n=1, proba=np.full((4, 2), 0.9)), "rows must sum to 1"),
    (dict(strategy="margin", n=1, proba=np.ones((4, 1))), "at least 2 classes"),
    (dict(strategy="margin", n=1, features=np.zeros((3, 2))), "disagree on its size"),
    (dict(strategy="kcenter", n=1, features=np.zeros((200, 2)), labelled_features=np.zeros((3, 5))), "dimensions"),
    (dict(strategy="unknown_first", n=1, unknown_score=np.full(200, np.nan)), "finite"),
])
def test_bad_input_is_one_clear_value_error(kwargs, message):
    _, proba = binary_pool()
    kwargs = {"proba": proba, **kwargs}
    with pytest.raises(ValueError, match=message.replace("(", r"\(")) as err:
        select(**kwargs)
    assert "\n" not in str(err.value)


def test_the_bench_turns_a_bad_strategy_into_one_line(tmp_path):
    with pytest.raises(UserError, match="unknown selection strategy 'foo'"):
        al.main(["--synthetic", "3,20,4", "--strategies", "margin,foo", "--out", str(tmp_path)])


# --- the simulated loop ---------------------------------------------------------------------

def test_two_rounds_of_the_loop_grow_the_labelled_set_from_the_pool_only(monkeypatch):
    data = al.synthetic_data(3, 30, 6, separation=6.0, seed=4)
    test_rows = {row.tobytes() for row in data.x["test"]} | {row.tobytes() for row in data.x["val"]}
    pool_rows = {row.tobytes() for row in data.x["train"]}
    assert not test_rows & pool_rows  # distinct rows, so a test row in the pool would be seen below
    offered, trained = [], []
    real_select = al.select

    def spy_select(strategy, n, proba=None, features=None, labelled_features=None, unknown_score=None, seed=0):
        offered.append(np.asarray(features))
        return real_select(strategy, n, proba=proba, features=features, labelled_features=labelled_features,
                           unknown_score=unknown_score, seed=seed)

    def spy_trainer(x_train, y_train, x_val, y_val, seed, **kwargs):
        trained.append(np.asarray(x_train))
        return al.train_head(x_train, y_train, x_val, y_val, seed, **kwargs)

    monkeypatch.setattr(al, "select", spy_select)
    settings = al.Settings(start_per_class=2, per_round=4, rounds=2, max_epochs=3)
    for strategy in ("margin", "kcenter", "unknown_first", "random"):
        offered.clear(), trained.clear()
        rows, history, preds = al.simulate(data, strategy, seed=1, settings=settings, trainer=spy_trainer)
        assert [len(h) for h in history] == [6, 10, 14] == [r["labelled"] for r in rows]
        for before, after in zip(history, history[1:]):
            assert len(np.unique(after)) == len(after) and set(before) < set(after)
            assert after.max() < len(data.y["train"])
        assert len(offered) == 2 and len(trained) == 3
        for features in offered + trained:
            assert not {row.tobytes() for row in features} & test_rows
        assert all(len(o) == len(data.y["train"]) - len(h) for o, h in zip(offered, history))
        assert all(0 <= r["macro_f1"] <= 1 and r["train_seconds"] > 0 for r in rows)
        assert preds.shape == (3, len(data.y["test"]))
        assert np.allclose(al.macro_f1_many(data.y["test"], preds, 3), [r["macro_f1"] for r in rows])


def test_macro_f1_many_is_scikit_learns_and_the_joint_bootstrap_pairs_strategies():
    from sklearn.metrics import f1_score
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 5)
    preds = rng.integers(0, 4, size=(30, len(y)))
    preds[0] = y
    preds[1] = 0  # classes never predicted
    expected = [f1_score(y, p, labels=np.arange(4), average="macro", zero_division=0) for p in preds]
    assert np.allclose(al.macro_f1_many(y, preds, 4), expected)
    # random and a copy of it: no difference in any resample; a perfect strategy: always better
    random_runs = preds[2:8].reshape(2, 3, len(y))  # 2 seeds x 3 rounds
    perfect = np.broadcast_to(y, random_runs.shape)
    stacked = np.stack([random_runs, random_runs, perfect])
    boot = al.joint_bootstrap(stacked, y, 4, np.array([4, 8, 12]), target=0.9,
                              strategies=["random", "copy", "perfect"], resamples=50)
    copy, best = boot.set_index("strategy").loc["copy"], boot.set_index("strategy").loc["perfect"]
    assert copy["aulc_diff_joint_lo"] == copy["aulc_diff_joint_hi"] == 0
    assert best["aulc_diff_joint_lo"] > 0


def test_train_head_is_deterministic_and_shaped_for_the_swap():
    data = al.synthetic_data(3, 20, 5, seed=2)
    args = (data.x["train"], data.y["train"], data.x["val"], data.y["val"], 3)
    w1, b1 = al.train_head(*args, max_epochs=2)
    w2, b2 = al.train_head(*args, max_epochs=2)
    assert w1.shape == (3, 5) and b1.shape == (3,)
    assert np.array_equal(w1, w2) and np.array_equal(b1, b2)


def test_the_bench_writes_markdown_and_csv(tmp_path):
    al.main(["--synthetic", "3,20,4", "--strategies", "margin,kcenter", "--seeds", "2", "--rounds", "1",
             "--per-round", "3", "--max-epochs", "2", "--out", str(tmp_path)])
    text = (tmp_path / "active_learning.md").read_text()
    assert "| margin |" in text and "## Labels needed" in text
    for name in ("rounds.csv", "summary.csv", "full_pool.csv"):
        assert (tmp_path / name).stat().st_size > 0
    assert set(STRATEGIES) >= {"margin", "kcenter", "random"}
