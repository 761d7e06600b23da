"""`gristmill report`: every section present, self-contained, HTML-escaped, numbers worked out by hand.

The scored corpus is written with gristmill.records; the experiment directory (experiment.json,
results.jsonl) is written by the test with plausible values whose over-scaling and speed-up are
computed by hand in the comments.
"""

import dataclasses
import json
import os
import re

import numpy as np
import pytest
from scipy import stats

from gristmill import cli, records
from gristmill.eval import report as R

ASK, DEN, PPLX = "score/askllm/flan-t5-small", "score/density/minilm", "score/perplexity/t5-small"
C4, HQ = "perplexity/c4_heldout", "perplexity/high_quality"
EVIL = "<script>alert('x')</script> Tom & Jerry <b>bold</b>"


@pytest.fixture
def scored(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "scored-00000-of-00001.tfrecord"
    with open(path, "wb") as f:
        for i in range(30):
            record = {"id": f"doc{i:02d}", "text": EVIL if i == 7 else f"Document {i} about topic {i % 4}. " * 3,
                      ASK: float(rng.uniform()), DEN: float(rng.lognormal())}
            if i % 3:
                record[PPLX] = float(rng.normal())
            if i == 7:
                record[ASK] = 2.0  # the highest Ask-LLM score: shown in the extremes section
            f.write(records.encode_tfrecord(records.serialize(record)))
    return str(path)


def result_rows():
    """tiny and small, 100 steps, checkpoints at 50 and 100 steps (1000 tokens per step)."""
    curves = {
        # (model, sampler, rate): {metric: (value at 50 steps, value at 100 steps)}
        ("tiny", "full", 1.0): {C4: (50.0, 40.0), HQ: (70.0, 60.0)},
        ("small", "full", 1.0): {C4: (38.0, 30.0), HQ: (58.0, 50.0)},
        ("tiny", "askllm", 0.5): {C4: (45.0, 37.5), HQ: (62.0, 55.0)},
        ("tiny", "random", 0.5): {C4: (52.0, 41.0), HQ: (72.0, 61.0)},
        ("small", "askllm", 0.5): {C4: (36.0, 29.0), HQ: (57.0, 49.0)},
    }
    params = {"tiny": 1_000_000, "small": 10_000_000}
    rows = []
    for (model, sampler, rate), by_metric in curves.items():
        for metric, values in by_metric.items():
            for step, value in zip((50, 100), values):
                rows.append({"model": model, "sampler": sampler, "rate": rate, "metric": metric, "value": value,
                             "steps": 100, "step": step, "tokens": step * 1000, "parameters": params[model],
                             "documents": None if sampler == "full" else 45.0, "run": f"runs/{model}/{sampler}"})
    return rows


@pytest.fixture
def experiment_dir(tmp_path, scored):
    directory = tmp_path / "exp"
    directory.mkdir()
    (directory / "experiment.json").write_text(json.dumps({
        "config": {"scored": [scored], "models": ["small", "tiny"]},  # declared order is ignored: parameters rule
        "corpus": {"documents": 100, "train_documents": 90, "heldout_documents": 10},
        "skipped_samplers": {"density": "no document of the corpus has the score feature 'score/density/x'"},
        "runs": ["runs/tiny/full"], "lower_is_better": [C4, HQ],
        "text_sets": {"c4_heldout": {"documents": 10, "examples": 20}}}))
    (directory / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in result_rows()))
    return str(directory)


def test_results_table_hand_computed():
    table = R.results_table(result_rows(), lower_is_better=[C4, HQ])
    by = {(r["model"], r["sampler"]): r for r in table}
    assert [(r["model"], r["sampler"]) for r in table] == [
        ("tiny", "full"), ("tiny", "askllm"), ("tiny", "random"), ("small", "full"), ("small", "askllm")]
    # tiny askllm: c4 (40 - 37.5) / (40 - 30) = 25%, hq (60 - 55) / (60 - 50) = 50% -> 37.5%
    assert by[("tiny", "askllm")]["over_scaling"] == pytest.approx(37.5)
    # tiny random: c4 -(41 - 40) / 10 = -10%, hq -(61 - 60) / 10 = -10% -> -10%
    assert by[("tiny", "random")]["over_scaling"] == pytest.approx(-10.0)
    assert by[("tiny", "full")]["over_scaling"] == 0.0
    assert by[("small", "askllm")]["over_scaling"] is None
    assert "no larger model size" in by[("small", "askllm")]["over_scaling_note"]
    # speed-up of tiny askllm on c4: full ends at 40 after 100k tokens; askllm goes 45 -> 37.5 between
    # 50k and 100k tokens, reaching 40 at 50k + (40 - 45) / (37.5 - 45) * 50k = 83,333 -> 16.7%
    s = by[("tiny", "askllm")]["speed_up"][C4]
    assert s["tokens_needed"] == pytest.approx(250_000 / 3) and s["percent"] == pytest.approx(100 / 6)
    never = by[("tiny", "random")]["speed_up"][C4]
    assert never["percent"] is None and "never reaches" in never["note"]
    assert by[("tiny", "full")]["speed_up"] == {}


def test_score_sections_data(scored):
    table = R.score_table(records.iter_scored_records(scored))
    assert list(table.scores) == sorted([ASK, DEN, PPLX]) and len(table.ids) == 30
    assert np.isnan(table.scores[PPLX]).sum() == 10
    ext = R.extremes(table, n=3)
    assert ext[ASK]["highest"][0]["id"] == "doc07" and ext[ASK]["highest"][0]["score"] == 2.0
    lows = [d["score"] for d in ext[DEN]["lowest"]]
    assert lows == sorted(table.scores[DEN])[:3]
    assert len(ext[PPLX]["highest"]) == 3 and all(np.isfinite(d["score"]) for d in ext[PPLX]["lowest"])
    counts, edges = R.histograms(table, bins=5)[PPLX]
    assert sum(counts) == 20 and len(edges) == 6
    curves = R.learning_curves(result_rows())
    run = next(e for e in curves[C4] if e["label"] == "tiny s100 askllm 50%")
    assert run["points"] == [(50_000.0, 45.0), (100_000.0, 37.5)] and run["sampler"] == "askllm"
    assert len(curves[C4]) == 5
    assert R.excerpt("a  b\n\nc " * 100, 10) == "a b c a b\u2026"


def test_report_page_is_complete_self_contained_and_escaped(experiment_dir, tmp_path):
    out = tmp_path / "report.html"
    data_out = tmp_path / "report.json"
    assert cli.main(["report", "--experiment", experiment_dir, "--output", str(out), "--json", str(data_out)]) == 0
    page = out.read_text()
    for section in R.SECTIONS:
        assert f'<section id="{section}">' in page
    # self-contained: every image inline, no links to anything
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 3 + 1 + 2  # 3 histograms, the tau matrix, 2 learning-curve figures
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in page and "https://" not in page and "href=" not in page and "<link" not in page
    # document text is escaped, never markup (Jinja2 autoescaping: markupsafe writes ' as &#39;)
    assert "<script>" not in page and "<b>bold</b>" not in page
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; Tom &amp; Jerry &lt;b&gt;bold&lt;/b&gt;" in page
    # the numbers of the results table and the skipped sampler reach the page
    assert "37.5%" in page and "-10.0%" in page and "16.7%" in page and "no larger model size" in page
    assert "no document of the corpus has the score feature" in page
    data = json.loads(data_out.read_text())
    assert data["correlation"]["names"] == sorted([ASK, DEN, PPLX])
    assert data["correlation"]["pairs"][0][2] == 20  # Ask-LLM x perplexity: documents having both


def test_kendall_section_matches_scipy(scored):
    data = R.build_report(None, scored)
    m = data.correlation
    i, j = m.names.index(ASK), m.names.index(PPLX)
    table = R.score_table(records.iter_scored_records(scored))
    both = np.isfinite(table.scores[PPLX])
    expected = stats.kendalltau(table.scores[ASK][both], table.scores[PPLX][both]).statistic
    assert m.tau[i, j] == pytest.approx(expected) and m.pairs[i, j] == 20
    assert data.table == [] and data.curves == {}
    page = R.HtmlWriter().render(data)
    assert all(f'<section id="{s}">' in page for s in R.SECTIONS) and "No results" in page


def test_report_needs_an_input(tmp_path):
    with pytest.raises(R.ReportError, match="give --experiment"):
        R.write_report(None, str(tmp_path / "r.html"))


FIVE = [ASK, DEN, PPLX, "score/semdedup/minilm", "score/prototypes/minilm-k8"]


def test_every_score_feature_gets_histogram_tau_and_calibration(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "scored-00000-of-00001.tfrecord"
    with open(path, "wb") as f:
        for i in range(40):
            record = {"id": f"doc{i:02d}", "text": f"Document {i}.", "url": f"u{i}"}
            record.update({name: float(rng.normal()) for k, name in enumerate(FIVE) if (i + k) % 4})
            f.write(records.encode_tfrecord(records.serialize(record)))
    out, cal_out = tmp_path / "r.html", tmp_path / "calibration.json"
    data = R.write_report(None, str(out), str(path), calibration_output=str(cal_out), documents=["doc03"])
    assert sorted(data.histograms) == sorted(FIVE) and data.correlation.names == sorted(FIVE)
    table = R.score_table(records.iter_scored_records(str(path)))
    i, j = data.correlation.names.index(FIVE[3]), data.correlation.names.index(FIVE[4])
    both = np.isfinite(table.scores[FIVE[3]]) & np.isfinite(table.scores[FIVE[4]])
    assert data.correlation.pairs[i, j] == both.sum()
    assert data.correlation.tau[i, j] == pytest.approx(
        stats.kendalltau(table.scores[FIVE[3]][both], table.scores[FIVE[4]][both]).statistic)
    page = out.read_text()
    assert len(re.findall(r'<img alt="histogram of ', page)) == 5
    for name in FIVE:
        assert f"Documents at percentiles of <code>{name}</code>" in page
    assert "doc03" in page and "chosen as" in page and "asked for" in page
    cal = json.loads(cal_out.read_text())
    assert sorted(cal["percentiles"]) == sorted(FIVE) and cal["agreement"]["documents"][i][j] == both.sum()
    assert any(row["id"] == "doc03" for row in cal["side_by_side"])


def test_quality_section_renders_an_evaluate_result(scored, tmp_path):
    quality = {"scored": scored, "labels": "labels.jsonl", "rates": [0.1, 0.2, 0.4],
               "join": {"joined": 25, "records": 30, "unmatched_labels": 2},
               "scores": {DEN: {"n": 25, "positives": 10, "base_rate": 0.4, "auc": 0.3125, "auc_ci": [0.1, 0.52],
                                "paper_rule": "ips", "precision": {"topk": {"0.1": 0.5, "0.2": 0.25, "0.4": 0.3},
                                                                   "ips": {"0.1": 0.625, "0.2": None, "0.4": 0.45}},
                                "kept": {}, "errors": {}}}}
    path = tmp_path / "quality.json"
    path.write_text(json.dumps(quality))
    page = R.HtmlWriter().render(R.build_report(None, scored, quality=str(path)))
    section = page[page.index('<section id="quality">'):]
    section = section[:section.index("</section>")]
    assert "25 of 30 scored documents labelled" in section and "2 labels matched no record" in section
    assert "0.312" in section and "[0.1, 0.52]" in section and "ips (paper)" in section
    assert "62.5%" in section and "40.0%" in section and "n/a" in section


def test_seed_spread_and_the_runs_scale_are_shown(experiment_dir, tmp_path):
    from gristmill.eval import experiment as E
    rows = [dict(r, std=0.5, seeds=[0, 1, 2]) for r in result_rows()]
    with open(os.path.join(experiment_dir, "results.jsonl"), "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    summary = json.load(open(os.path.join(experiment_dir, "experiment.json")))
    summary["config"].update(steps=[100], seed=0)
    summary["seeds"] = [0, 1, 2]
    summary["seed_comparison"] = [dict(dataclasses.asdict(c), difference=c.difference, within_spread=c.within_spread)
                                  for c in E.compare_to_full(rows)]
    with open(os.path.join(experiment_dir, "experiment.json"), "w") as f:
        json.dump(summary, f)
    out = tmp_path / "report.html"
    R.write_report(experiment_dir, str(out))
    page = out.read_text()
    assert "3 seed(s) per run" in page and "not the paper" in page
    # tiny random vs full: 41.0 vs 40.0 with std 0.5 each -> within the spread; askllm 37.5 vs 40.0 -> beyond
    assert page.count("within the seed spread") >= 1 and page.count("beyond the seed spread") >= 1
    assert "± 0.5" in page
