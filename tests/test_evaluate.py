"""`gristmill evaluate`: ROC-AUC against scipy's Mann-Whitney U, precision by rate worked out by hand,
a planted perfect and an anti-correlated score, the bootstrap interval, labels and the join by id."""

import json
import math

import numpy as np
import pytest
from scipy import stats

from gristmill import cli, documents, records
from gristmill.eval import quality as Q

ASK, DEN, PPL, RND = ("score/askllm/smollm2", "score/density/minilm", "score/perplexity/t5-small",
                      "score/random/seed-0")


def mannwhitney_auc(scores, labels):
    """The reference: scipy's U statistic of the positives over positives x negatives."""
    s, y = np.asarray(scores, float), np.asarray(labels, bool)
    return stats.mannwhitneyu(s[y], s[~y], alternative="two-sided").statistic / (y.sum() * (~y).sum())


# --- AUC -----------------------------------------------------------------------------------

def test_auc_hand_worked():
    # positives 0.9, 0.8, 0.6, 0.3 against negatives 0.7, 0.5, 0.4, 0.3, 0.1, 0.0:
    # 0.9 and 0.8 beat all 6, 0.6 beats 5 (not 0.7), 0.3 beats 0.1 and 0.0 and ties 0.3 (1/2):
    # (6 + 6 + 5 + 2.5) / 24 = 0.8125
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.3, 0.1, 0.0]
    labels = [1, 1, 0, 1, 0, 0, 1, 0, 0, 0]
    assert Q.roc_auc(scores, labels) == pytest.approx(19.5 / 24)
    assert Q.roc_auc(scores, labels) == pytest.approx(mannwhitney_auc(scores, labels))
    assert Q.roc_auc([3, 2, 2, 1], [1, 1, 0, 0]) == pytest.approx(0.875)  # the docstring's example
    assert math.isnan(Q.roc_auc([1, 2], [1, 1])) and math.isnan(Q.roc_auc([], []))


@pytest.mark.parametrize("n, ties, seed", [(7, False, 0), (300, True, 1), (2000, True, 2), (5000, False, 3)])
def test_auc_matches_scipy_mannwhitneyu(n, ties, seed):
    rng = np.random.default_rng(seed)
    labels = rng.uniform(size=n) < 0.3
    labels[:2] = [True, False]
    scores = rng.normal(size=n) + labels
    if ties:
        scores = np.round(scores * 2)
    assert Q.roc_auc(scores, labels) == pytest.approx(mannwhitney_auc(scores, labels), abs=1e-12)


def test_resampled_auc_is_the_auc_of_each_resample():
    rng = np.random.default_rng(4)
    labels = rng.uniform(size=60) < 0.4
    scores = np.round(rng.normal(size=60) + labels, 1)  # ties
    indices = rng.integers(0, 60, size=(25, 60))
    got = Q.resampled_auc(scores, labels, indices)
    expected = [mannwhitney_auc(scores[i], labels[i]) for i in indices]
    assert got == pytest.approx(expected, abs=1e-12)
    one_class = Q.resampled_auc(scores, labels, np.flatnonzero(labels)[None, :])
    assert np.isnan(one_class).all()


def test_bootstrap_interval_is_seeded_and_agrees_with_scipy_bootstrap():
    rng = np.random.default_rng(5)
    labels = rng.uniform(size=300) < 0.3
    scores = rng.normal(size=300) + 0.8 * labels
    ci = Q.bootstrap_auc_ci(scores, labels, resamples=2000, seed=7)
    assert ci == Q.bootstrap_auc_ci(scores, labels, resamples=2000, seed=7)
    assert ci != Q.bootstrap_auc_ci(scores, labels, resamples=2000, seed=8)
    auc = Q.roc_auc(scores, labels)
    assert ci[0] < auc < ci[1]
    reference = stats.bootstrap((scores, labels), mannwhitney_auc, paired=True, vectorized=False,
                                n_resamples=2000, method="percentile", random_state=0).confidence_interval
    # two independent Monte Carlo draws of the same percentiles: equal up to resampling noise
    assert ci[0] == pytest.approx(reference.low, abs=0.02) and ci[1] == pytest.approx(reference.high, abs=0.02)
    assert Q.bootstrap_auc_ci(scores, np.ones(300, bool)) is None


# --- precision -----------------------------------------------------------------------------

def test_precision_by_rate_hand_worked():
    ids = [f"d{i}" for i in range(10)]
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0]
    labels = np.array([1, 1, 0, 1, 0, 0, 1, 0, 0, 0], bool)
    # top 10%: 0.9 (good); top 20%: 0.9, 0.8 (both good); top 40%: 0.9, 0.8, 0.7, 0.6 (3 of 4 good)
    got = {rate: Q.selection_precision(ids, scores, labels, rule="topk", rate=rate) for rate in (0.1, 0.2, 0.4)}
    assert got == {0.1: (1.0, 1.0), 0.2: (1.0, 2.0), 0.4: (0.75, 4.0)}
    # bottom 40%: 0.3, 0.2, 0.1, 0.0 (1 of 4 good)
    assert Q.selection_precision(ids, scores, labels, rule="bottomk", rate=0.4) == (0.25, 4.0)
    # random: the expected precision is the base rate, 4 / 10
    precision, kept = Q.selection_precision(ids, scores, labels, rule="random", rate=0.2)
    assert precision == pytest.approx(0.4) and kept == pytest.approx(2.0)


def test_ips_expected_precision_hand_worked():
    # scores 1, 1, 2, 4 at rate 0.5 (sampling's docstring): c = 2 / (1 + 1 + 1/2 + 1/4) = 8/11,
    # pi = 8/11, 8/11, 4/11, 2/11 (sum 2); the two sparsest (scores 2, 4) are good:
    # expected precision = (4/11 + 2/11) / 2 = 3/11
    precision, kept = Q.selection_precision(["a", "b", "c", "d"], [1.0, 1.0, 2.0, 4.0], [0, 0, 1, 1],
                                            rule="ips", rate=0.5)
    assert precision == pytest.approx(3 / 11) and kept == pytest.approx(2.0)


def test_paper_rules():
    assert [Q.paper_rule(f) for f in (ASK, DEN, PPL, RND, "score/semdedup/minilm", "score/prototypes/k100",
                                      "score/askllm-head/minilm", "score/newscorer/x")] == [
        "topk", "ips", "bottomk", "random", "topk", "topk", "topk", "topk"]


def test_planted_perfect_and_anti_correlated_scores():
    rng = np.random.default_rng(6)
    n = 500
    labels = rng.uniform(size=n) < 0.3
    base = labels.mean()
    ids = [f"doc{i}" for i in range(n)]
    perfect = labels + 0.1 * rng.uniform(size=n)
    r = Q.evaluate_feature(ids, perfect, labels, feature=ASK, resamples=200)
    assert r["auc"] == 1.0 and r["auc_ci"] == (1.0, 1.0)
    assert r["n"] == n and r["positives"] == labels.sum() and r["base_rate"] == pytest.approx(base)
    for rate in (0.1, 0.2):  # rates <= the base rate keep only good documents
        assert rate <= base and r["precision"]["topk"][Q.rate_key(rate)] == 1.0
    assert r["precision"]["topk"]["0.4"] == pytest.approx(labels.sum() / round(0.4 * n))  # every good one
    assert list(r["precision"]) == ["topk"] and r["paper_rule"] == "topk"
    anti = Q.evaluate_feature(ids, -perfect, labels, feature=PPL, resamples=200)
    assert anti["auc"] == 0.0 and anti["auc_ci"] == (0.0, 0.0)
    assert anti["precision"]["topk"]["0.2"] == 0.0
    assert anti["precision"]["bottomk"]["0.2"] == 1.0  # perplexity's rule keeps the lowest scores
    dens = Q.evaluate_feature(ids, np.where(labels, 1.0, 100.0), labels, feature=DEN, resamples=50)
    assert dens["auc"] == 0.0 and dens["precision"]["ips"]["0.1"] > base  # IPS prefers the sparse good ones
    bad = Q.evaluate_feature(ids, np.where(labels, 0.0, 1.0), labels, feature=DEN, resamples=50)
    assert bad["precision"]["ips"]["0.2"] is None and "> 0" in bad["errors"]["ips"]


# --- labels and the command ----------------------------------------------------------------

def test_label_values():
    plain, graded = Q.LabelConfig(), Q.LabelConfig(threshold_field="grade", threshold=3)
    assert [Q.label_value(v, plain) for v in (1, 0, True, False, "1", " 0 ", "true", b"1", [1], None, "")] == [
        True, False, True, False, True, False, True, True, True, None, None]
    assert [Q.label_value(v, graded) for v in (2, 3, 4.5, "2.9", "3")] == [False, True, True, False, True]
    with pytest.raises(Q.QualityError, match="not 0/1: pass --threshold"):
        Q.label_value(3, plain)
    with pytest.raises(Q.QualityError, match="needs --threshold"):
        Q.LabelConfig(threshold_field="grade")


def test_read_labels_counts_duplicates_and_conflicts(tmp_path):
    rows = [{"text": "a", "label": 1}, {"text": "a", "label": 1}, {"text": "b", "url": "u", "label": 0},
            {"text": "c", "label": 1}, {"text": "c", "label": 0}, {"text": "d"}, {"label": 1}]
    path = tmp_path / "labels.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    labels, counts = Q.read_labels(str(path))
    assert labels == {documents.document_id("", "a"): True, documents.document_id("u", "b"): False}
    assert counts == {"rows": 7, "labelled": 5, "unlabelled": 1, "no_text": 1, "duplicates": 1, "conflicts": 1}


def _write_scored(path, docs):
    with open(path, "wb") as f:
        for doc in docs:
            f.write(records.encode_tfrecord(records.serialize(doc)))


def test_evaluate_command_joins_labels_by_document_id(tmp_path):
    rng = np.random.default_rng(7)
    docs, label_rows = [], []
    for i in range(120):
        text, url = f"Document {i}: " + "words " * (i % 5 + 1), f"https://example.com/{i}" if i % 2 else ""
        good = bool(i % 3 == 0)
        doc = {"id": documents.document_id(url, text), "text": text, "url": url,
               ASK: float(good + rng.uniform()), DEN: float(rng.uniform(0.5, 2.0)), RND: float(rng.uniform())}
        if i % 4:
            doc[PPL] = float(rng.normal())
        docs.append(doc)
        if i < 100:  # 20 records stay unlabelled
            label_rows.append({"text": text, "url": url, "grade": 4 if good else 1})
    label_rows.append({"text": "a labelled text nobody scored", "grade": 5})
    _write_scored(tmp_path / "scored-00000-of-00001.tfrecord", docs)
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in label_rows))
    out = tmp_path / "quality.json"
    assert cli.main(["evaluate", "--scored", str(tmp_path / "scored-*.tfrecord"), "--labels", str(labels),
                     "--threshold_field", "grade", "--threshold", "3", "--bootstrap", "200",
                     "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["join"]["joined"] == 100 and result["join"]["records"] == 120
    assert result["join"]["unmatched_labels"] == 1 and result["join"]["labelled"] == 101
    assert sorted(result["scores"]) == sorted([ASK, DEN, PPL, RND])
    ask = result["scores"][ASK]
    expected_labels = np.array([i % 3 == 0 for i in range(100)])
    expected_scores = np.array([d[ASK] for d in docs[:100]], np.float32)
    assert ask["n"] == 100 and ask["base_rate"] == pytest.approx(expected_labels.mean())
    assert ask["auc"] == pytest.approx(mannwhitney_auc(expected_scores, expected_labels))
    assert ask["auc_ci"][0] <= ask["auc"] <= ask["auc_ci"][1]
    assert set(ask["precision"]["topk"]) == {"0.1", "0.2", "0.4"}
    assert result["scores"][PPL]["n"] == 75  # only the labelled documents having that score
    assert set(result["scores"][DEN]["precision"]) == {"topk", "ips"}
    assert set(result["scores"][RND]["precision"]) == {"topk", "random"}
    assert result["scores"][RND]["precision"]["random"]["0.2"] == pytest.approx(expected_labels.mean())


def test_evaluate_reads_labels_kept_in_the_records(tmp_path):
    docs = [{"id": f"d{i}", "text": f"t{i}", "label": i % 2, ASK: float(i % 2) + i / 100} for i in range(40)]
    _write_scored(tmp_path / "scored.tfrecord", docs)
    result = Q.run(["--scored", str(tmp_path / "scored.tfrecord"), "--bootstrap", "50",
                    "--output", str(tmp_path / "q.json")])
    assert result["scores"][ASK]["auc"] == 1.0 and result["join"]["joined"] == 40
    with pytest.raises(Q.QualityError, match="has a 'grade' label feature"):
        Q.run(["--scored", str(tmp_path / "scored.tfrecord"), "--label_field", "grade",
               "--output", str(tmp_path / "q.json")])
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"text": "unrelated", "label": 1}) + "\n")
    with pytest.raises(Q.QualityError, match="no labelled document joined"):
        Q.run(["--scored", str(tmp_path / "scored.tfrecord"), "--labels", str(other),
               "--output", str(tmp_path / "q.json")])
