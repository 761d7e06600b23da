"""Calibration views: percentiles against scipy, the documents at percentiles and the side-by-side
percentile ranks worked out by hand, the agreement matrix against scipy.stats.kendalltau."""

import json

import numpy as np
import pytest
from scipy import stats

from gristmill import records
from gristmill.eval import calibration as C
from gristmill.eval import scores as S

A, B = "score/askllm/m", "score/density/minilm"


def table():
    """Ten documents d0..d9: A = 0, 1, ..., 9; B = 9, 8, ... on d0..d5 only (the rest unscored), with a tie."""
    ids = [f"d{i}" for i in range(10)]
    a = np.arange(10, dtype=float)
    b = np.array([9, 8, 7, 6, 5, 5, np.nan, np.nan, np.nan, np.nan])
    return S.ScoreTable(ids=ids, texts=[f"text of d{i}" for i in range(10)], scores={A: a, B: b},
                        urls=[f"https://x/{i}" for i in range(10)])


def test_score_at_percentiles_matches_scipy():
    rng = np.random.default_rng(0)
    values = rng.lognormal(size=501)
    values[::7] = np.nan  # missing scores are left out
    got = C.score_at_percentiles(values)
    finite = values[np.isfinite(values)]
    assert list(got) == [f"p{p}" for p in C.PERCENTILES]
    for p in C.PERCENTILES:
        assert got[C.percentile_key(p)] == pytest.approx(stats.scoreatpercentile(finite, p))
    assert got["p0"] == finite.min() and got["p100"] == finite.max()
    assert C.score_at_percentiles([np.nan]) == {}


def test_percentile_ranks_match_scipy_percentileofscore():
    rng = np.random.default_rng(1)
    values = np.round(rng.normal(size=300), 1)  # many ties
    values[:20] = np.nan
    ranks = C.percentile_ranks(values)
    finite = values[20:]
    assert np.isnan(ranks[:20]).all()
    expected = [stats.percentileofscore(finite, v, kind="mean") for v in finite]
    assert ranks[20:] == pytest.approx(expected)


def test_documents_at_percentiles_and_side_by_side_hand_worked():
    cal = C.calibration(table(), document_percentiles=(0, 50, 100), ids=["d9", "nope"])
    # A over 10 documents: p0 -> rank 0 (d0), p50 -> rank 4.5 rounded up to 5 (d5), p100 -> rank 9 (d9)
    assert [(d["percentile"], d["id"], d["score"]) for d in cal.documents[A]] == [
        (0.0, "d0", 0.0), (50.0, "d5", 5.0), (100.0, "d9", 9.0)]
    # B over its 6 documents in (score, id) order d4 (5), d5 (5), d3, d2, d1, d0: p50 -> rank 2.5 -> 3 (d2)
    assert [d["id"] for d in cal.documents[B]] == ["d4", "d2", "d0"]
    assert cal.documents[A][0]["url"] == "https://x/0" and cal.documents[A][0]["excerpt"] == "text of d0"
    rows = {row["id"]: row for row in cal.side_by_side}
    assert list(rows) == ["d0", "d5", "d9", "d4", "d2"]
    assert rows["d0"]["chosen_by"] == [f"{A} p0", f"{B} p100"]
    assert rows["d9"]["chosen_by"] == [f"{A} p100", "asked for"]
    # d0 under A: 0 below, itself tied -> 100 * 0.5 / 10 = 5; under B: 5 below + 1/2 -> 100 * 5.5 / 6
    assert rows["d0"]["percentile"] == {A: pytest.approx(5.0), B: pytest.approx(550 / 6)}
    # d4 under B ties d5 at the bottom: 100 * (0 + 2 / 2) / 6; d9 has no B score
    assert rows["d4"]["percentile"][B] == pytest.approx(100 / 6)
    assert rows["d9"]["percentile"][B] is None and rows["d9"]["score"] == {A: 9.0, B: None}
    assert cal.scored == {A: 10, B: 6} and cal.documents_total == 10


def test_agreement_matrix_with_document_counts(tmp_path):
    cal = C.calibration(table())
    m = cal.agreement
    assert m.names == [A, B] and m.pairs.tolist() == [[10, 6], [6, 6]]
    a, b = table().scores[A][:6], table().scores[B][:6]
    assert m.tau[0, 1] == pytest.approx(stats.kendalltau(a, b).statistic)
    path = tmp_path / C.CALIBRATION_FILE
    C.write_json(cal, str(path))
    data = json.loads(path.read_text())
    assert data["agreement"]["documents"] == [[10, 6], [6, 6]]
    assert data["agreement"]["tau"][0][1] == pytest.approx(m.tau[0, 1])
    assert data["percentiles"][A]["p50"] == 4.5 and data["scored"] == {A: 10, B: 6}


def test_score_table_reads_every_score_feature(tmp_path):
    path = tmp_path / "scored.tfrecord"
    names = [f"score/{s}/m" for s in ("askllm", "density", "perplexity", "semdedup", "prototypes")]
    with open(path, "wb") as f:
        for i in range(8):
            record = {"id": f"d{i}", "text": f"t{i}", "url": f"u{i}", "tokens/x": 3}
            record.update({name: float(i * (k + 1)) for k, name in enumerate(names) if (i + k) % 3})
            f.write(records.encode_tfrecord(records.serialize(record)))
    t = S.read_score_table(str(path))
    assert list(t.scores) == sorted(names) and t.urls[3] == "u3"
    cal = C.calibration(t)
    assert sorted(cal.percentiles) == sorted(names) and cal.agreement.names == sorted(names)
