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
    # self-contained: every image inline, links only to the page's own sections
    sources = re.findall(r'src="([^"]*)"', page)
    # 3 histograms, the tau matrix, 2 learning-curve figures, 2 metrics x 2 sizes against sampling rate,
    # Ask-LLM against Density
    assert len(sources) == 3 + 1 + 2 + 4 + 1
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert all(h.startswith("#") for h in re.findall(r'href="([^"]*)"', page))
    assert "http://" not in page and "https://" not in page and "<link" not in page
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
    from gristmill.eval import results as E
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


# --- a partly finished experiment with its selection plans and the jobs behind its records ------

from html.parser import HTMLParser  # noqa: E402

from gristmill import sampling  # noqa: E402
from gristmill.eval import metrics as M  # noqa: E402

ASK_F, DEN_F = "score/askllm/flan", "score/density/minilm"
N_DOCS, HELD = 60, 6  # doc00..doc05 are the held-out split
HOSTS = ["a.example.com", "a.example.com", "a.example.com", "b.example.org", "b.example.org", "c.example.net"]


class Page(HTMLParser):
    """The report page parsed: the contents' links and, per section, its text, tables (rows of cell
    texts), images (attributes) and raw HTML."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.html, self.nav, self.sections, self.order = html, [], {}, []
        self._section = self._table = self._row = self._cell = None
        self._in_nav = False
        self.feed(html)
        for sid, sec in self.sections.items():
            start = html.index(f'<section id="{sid}">')
            sec["html"] = html[start:html.index("</section>", start)]
            sec["text"] = " ".join("".join(sec["text"]).split())

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "nav":
            self._in_nav = True
        elif tag == "a" and self._in_nav:
            self.nav.append(a.get("href"))
        elif tag == "section":
            self._section = {"text": [], "tables": [], "images": []}
            self.sections[a["id"]] = self._section
            self.order.append(a["id"])
        elif self._section is None:
            return
        elif tag == "table":
            self._table = []
            self._section["tables"].append(self._table)
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
            self._row.append(self._cell)
        elif tag == "img":
            self._section["images"].append(a)

    def handle_endtag(self, tag):
        if tag == "nav":
            self._in_nav = False
        elif tag == "section":
            self._section = None
        elif tag == "table":
            for row in self._table or []:
                row[:] = [" ".join(" ".join(c).split()) if isinstance(c, list) else c for c in row]  # <br> -> space
            self._table = None
        elif tag in ("td", "th"):
            self._cell = None

    def handle_data(self, data):
        if self._section is not None:
            self._section["text"].append(data)
        if self._cell is not None:
            self._cell.append(data)

    def table(self, section: str, header: str) -> list[dict[str, str]]:
        """The rows of the section's first table whose first header cell is `header`, as dicts."""
        for t in self.sections[section]["tables"]:
            if t and t[0] and t[0][0] == header:
                return [dict(zip(t[0], row)) for row in t[1:]]
        raise AssertionError(f"no table headed {header!r} in {section}")


def _doc(i):
    ask = (i * 37 % 60) / 60 + 0.005  # distinct, in (0, 1)
    den = 10 ** (-2 + 4 * ((i * 23 % 60) / 59))  # 0.01 .. 100: spans four orders of magnitude
    record = {"id": f"doc{i:02d}", "text": f"Document {i} on host {i % 6}. " + "word " * (5 + 7 * (i % 9)),
              "source": f"/data/c4/c4-train.0000{0 if i < 40 else 1}.json.gz", ASK_F: ask, DEN_F: den,
              "truncated/askllm": int(i % 4 != 0)}
    if i != N_DOCS - 1:
        record["url"] = f"https://{HOSTS[i % 6]}/page/{i}"
    return record


def _manifest(directory, job, inputs, counts, start, end, records_=(), config=None):
    directory.mkdir(parents=True, exist_ok=True)
    base = {"read": 0, "documents": 0, "written": 0, "dead_lettered": 0, "dead_lettered_by_reason": {},
            "excluded": {}, "units_total": 1, "units_reused": 0}
    (directory / "manifest.json").write_text(json.dumps({
        "job": job, "config": config or {}, "inputs": [{"path": str(p)} for p in inputs],
        "counts": {**base, **counts}, "reconciled": True, "started_at": start, "finished_at": end,
        "outputs": {"records": list(records_)}}))


RUNS = {  # (sampler, rate) -> {metric: (value at 50 steps, at 100 steps)}, seeds finished
    ("full", 1.0): ({C4: (50.0, 40.0), HQ: (70.0, 60.0)}, [0, 1]),
    ("askllm-flan", 0.2): ({C4: (45.0, 37.5), HQ: (62.0, 55.0)}, [0, 1]),
    ("random", 0.2): ({C4: (39.0, 41.0), HQ: (59.0, 61.0)}, [0]),  # a noisy first checkpoint, worse at the end
}


@pytest.fixture(scope="module")
def partial(tmp_path_factory):
    """Builds the experiment and renders its report once: (root, page, data, plans, train ids)."""
    root = tmp_path_factory.mktemp("partial")
    docs = [_doc(i) for i in range(N_DOCS)]
    _manifest(root / "random", "score random", [root / "corpus.jsonl"],
              {"read": 62, "documents": 60, "written": 60, "dead_lettered": 2,
               "dead_lettered_by_reason": {"empty_text": 1, "invalid_json": 1}, "units_total": 2, "units_reused": 1},
              "2024-05-01T10:00:00+00:00", "2024-05-01T10:00:12+00:00")
    scored_dir = root / "askllm"
    _manifest(scored_dir, "score askllm", [root / "random" / "units" / "r-00000.tfrecord"],
              {"read": 60, "documents": 60, "written": 60}, "2024-05-01T10:01:00+00:00",
              "2024-05-01T10:01:45+00:00", ["units/scored-00000.tfrecord"], {"max_length": 128})
    (scored_dir / "units").mkdir()
    with open(scored_dir / "units" / "scored-00000.tfrecord", "wb") as f:
        for record in docs:
            f.write(records.encode_tfrecord(records.serialize(record)))
    _manifest(root / "select-askllm", "select", [scored_dir / "units" / "scored-00000.tfrecord"],
              {"read": 60, "documents": 60, "written": 12, "excluded": {"not_selected": 48}},
              "2024-05-01T10:02:00+00:00", "2024-05-01T10:02:03+00:00")
    _manifest(root / "labels-random", "score random", [root / "labels.jsonl"], {"read": 5, "written": 5},
              "2024-05-01T10:03:00+00:00", "2024-05-01T10:03:01+00:00")  # another chain: not shown

    exp = root / "experiment"
    train = docs[HELD:]
    (exp / "data").mkdir(parents=True)
    (exp / "data" / "c4_heldout.jsonl").write_text("".join(
        json.dumps({"id": d["id"], "text": d["text"]}) + "\n" for d in docs[:HELD]))
    ids = [d["id"] for d in train]
    tokens = np.asarray([sampling.approx_token_count(d["text"]) for d in train])
    specs = {"random": ("random", None), "askllm-flan": ("topk", ASK_F), "density-minilm": ("ips", DEN_F)}
    plans, runs = {}, []
    for sampler in ("full", "random", "askllm-flan", "density-minilm"):
        group = "full" if sampler == "full" else f"{sampler}-0.2"
        for seed in (0, 1):
            run = os.path.join("runs", "tiny-s100", group, f"seed-{seed}")
            runs.append(run)
            finished = RUNS.get((sampler, 1.0 if sampler == "full" else 0.2), ({}, []))[1]
            if seed in finished or (sampler == "density-minilm" and seed == 0):
                (exp / run).mkdir(parents=True)
            if seed in finished:
                (exp / run / "eval.json").write_text(json.dumps({"key": {}, "rows": []}))
            if sampler != "full" and (exp / run).exists():
                rule, feature = specs[sampler]
                plan = sampling.plan_from_scores(rule, ids, [d[feature] for d in train] if feature else None,
                                                 rate=0.2, seed=seed, tokens=tokens, score_feature=feature,
                                                 tokens_feature=sampling.PROXY_TOKENS)
                (exp / run / "plan.json").write_text(plan.to_json())
                plans.setdefault(sampler, plan)
    (exp / "experiment.json").write_text(json.dumps({
        "config": {"scored": [str(scored_dir)], "models": ["tiny"], "steps": [100], "seed": 0, "seeds": [0, 1]},
        "corpus": {"documents": N_DOCS, "train_documents": N_DOCS - HELD, "heldout_documents": HELD},
        "skipped_samplers": {"semdedup": "no score feature of the corpus matches 'score/semdedup/*'"},
        "samplers": ["full", "random", "askllm-flan", "density-minilm"], "seeds": [0, 1], "runs": runs,
        "lower_is_better": [C4, HQ]}))
    rows = []
    for (sampler, rate), (by_metric, seeds) in RUNS.items():
        for metric, values in by_metric.items():
            for step, value in zip((50, 100), values):
                rows.append({"model": "tiny", "sampler": sampler, "rate": rate, "metric": metric, "value": value,
                             "steps": 100, "step": step, "tokens": step * 1000, "parameters": 1e6,
                             "std": 0.5 if len(seeds) > 1 else 0.0, "seeds": seeds,
                             "documents": None if sampler == "full" else 11.0,
                             "run": f"runs/tiny-s100/{sampler}"})
    (exp / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = root / "site" / "report.html"
    out.parent.mkdir()
    data = R.write_report(str(exp), str(out), json_output=str(root / "site" / "report.json"))
    return root, Page(out.read_text()), data, plans, ids


def test_contents_link_every_section_in_order(partial):
    _, page, _, _, _ = partial
    assert page.nav == [f"#{s}" for s in R.SECTIONS] and page.order == list(R.SECTIONS)
    assert str(partial[0]) not in page.html  # no absolute path of this machine anywhere


def test_run_status_counts_planned_finished_unfinished(partial):
    _, page, data, _, _ = partial
    st = data.status
    assert (st["planned"], st["finished"], st["unfinished"], st["not_started"]) == (8, 5, 1, 2)
    text = page.sections["status"]["text"]
    assert "8 runs planned" in text and "5 finished" in text and "1 unfinished (failed, or still running)" in text
    assert "2 not started" in text and "has not completed" in text
    cells = {r["grid cell"].split("/")[-1]: r for r in page.table("status", "grid cell")}
    assert cells["full"]["state"] == "finished" and cells["full"]["seeds finished"] == "0, 1"
    assert cells["random-0.2"]["state"] == "partly finished (seed 1 not started)"
    assert cells["random-0.2"]["seeds finished"] == "0"
    assert cells["density-minilm-0.2"]["state"] == "unfinished (seed 0 unfinished; seed 1 not started)"
    assert cells["density-minilm-0.2"]["seeds finished"] == "none"
    assert "semdedup: no score feature of the corpus matches" in text


def test_results_rows_say_their_seeds_and_speed_up_must_hold(partial):
    _, page, data, _, _ = partial
    rows = {r["sampler"]: r for r in page.table("results", "model")}
    assert {s: r["seeds"] for s, r in rows.items()} == {"full": "2", "askllm-flan": "2", "random": "1"}
    assert rows["askllm-flan"][C4] == "37.5 ± 0.5" and rows["random"][C4] == "41 1 seed"
    assert "±" not in rows["random"][C4] + rows["random"][HQ]
    # askllm: 45 -> 37.5 crosses full's final 40 at 50k + 5/7.5 * 50k tokens and stays: 16.7%;
    # random dips to 39 at 50k but ends at 41: it never reaches full data (not a 50% speed-up)
    assert rows["askllm-flan"][f"speed-up {C4}"] == "16.7% 8.33e+04 tokens"
    assert rows["random"][f"speed-up {C4}"].startswith("never reaches full data (ends at 41, full data 40)")
    # one model size: no over-scaling column, one note explaining why
    assert "over-scaling" not in page.table("results", "model")[0] and page.html.count("Over-scaling compares") == 1
    assert "This grid trains one size (tiny)" in page.sections["results"]["text"]
    text = page.sections["results"]["text"]
    assert "density-minilm-0.2: 0 of 2 seeds finished (unfinished)" in text and "semdedup: skipped" in text


def test_speed_up_counts_only_once_the_curve_stays_at_full_data():
    full = [(100, 10.0), (200, 8.0)]
    assert M.speed_up([(50, 7.0), (150, 9.0)], full, lower_is_better=True).percent is None
    # dips to 7, back to 9, then 7 for good: the crossing that counts is between 100 and 150 tokens
    s = M.speed_up([(50, 7.0), (100, 9.0), (150, 7.0)], full, lower_is_better=True)
    assert s.tokens_needed == pytest.approx(125.0) and s.percent == pytest.approx(37.5)


def test_headline_plot_per_metric_with_full_data_reference(partial):
    _, page, data, _, _ = partial
    group = data.rate_curves[C4][0]
    assert group["full"] == 40.0 and group["rates"] == [0.2]
    assert group["samplers"]["askllm-flan"] == [{"rate": 0.2, "value": 37.5, "std": 0.5, "seeds": 2}]
    assert group["samplers"]["random"][0]["seeds"] == 1
    alts = [i["alt"] for i in page.sections["headline"]["images"]]
    assert alts == [f"{C4} tiny s100 against sampling rate", f"{HQ} tiny s100 against sampling rate"]
    assert all(i["src"].startswith("data:image/png;base64,") for i in page.sections["headline"]["images"])
    assert "one sampling rate (20%)" in page.sections["headline"]["text"]


def test_learning_curves_carry_the_seed_spread(partial):
    _, page, data, _, _ = partial
    run = next(e for e in data.curves[C4] if e["sampler"] == "askllm-flan")
    assert run["std"] == [0.5, 0.5] and run["seeds"] == 2
    assert len(page.sections["curves"]["images"]) == 2


def test_coverage_marks_what_each_plan_kept(partial):
    _, page, data, plans, ids = partial
    train = [_doc(i) for i in range(HELD, N_DOCS)]
    ask = sampling.keep_mask(plans["askllm-flan"], ids, [d[ASK_F] for d in train])
    den = sampling.keep_mask(plans["density-minilm"], ids, [d[DEN_F] for d in train])
    c = data.coverage
    assert (c["x"], c["y"], c["documents"]) == (DEN_F, ASK_F, N_DOCS - HELD) and c["log_x"] and not c["log_y"]
    assert c["groups"] == {k: v for k, v in {
        "kept by askllm-flan only": int((ask & ~den).sum()), "kept by both": int((ask & den).sum()),
        "kept by density-minilm only": int((den & ~ask).sum()), "kept by neither": int((~ask & ~den).sum())}.items()
        if v}
    assert f"{HELD} documents outside the plans' population" in page.sections["coverage"]["text"]
    assert [i["alt"] for i in page.sections["coverage"]["images"]] == ["Ask-LLM against Density"]


def test_coverage_without_a_plan_shows_every_document_with_a_note(tmp_path):
    path = tmp_path / "scored.tfrecord"
    path.write_bytes(b"".join(records.encode_tfrecord(records.serialize(_doc(i))) for i in range(20)))
    data = R.build_report(None, str(path))
    assert data.coverage["groups"] == {"all documents": 20} and "none marked" in data.coverage["note"]
    assert data.status is None and data.composition["selections"] == []


def test_selection_composition_by_host_source_tokens_and_threshold(partial):
    _, page, data, plans, ids = partial
    train = [_doc(i) for i in range(HELD, N_DOCS)]
    tokens = np.asarray([sampling.approx_token_count(d["text"]) for d in train])
    kept = {name: np.asarray(sampling.keep_mask(
        p, ids, [d[p.score_feature] for d in train] if p.score_feature else None)) for name, p in plans.items()}
    summary = {r["selection"].split(" seed")[0]: r for r in page.table("composition", "selection")}
    assert list(summary) == ["random 20%", "askllm-flan 20%", "density-minilm 20%"]
    for name in ("random", "askllm-flan"):
        row = summary[f"{name} 20%"]
        assert row["documents before → after"] == f"{N_DOCS - HELD} → {int(kept[name].sum())}"
        assert row["tokens before → after"] == f"{tokens.sum()} → {tokens[kept[name]].sum()}"
    assert summary["askllm-flan 20%"]["threshold"].startswith(
        f"{plans['askllm-flan'].rule.threshold_score:.4g} keeps scores above it")
    assert "ignores scores" in summary["random 20%"]["threshold"]
    hosts = {r["URL host"]: r for r in page.table("composition", "URL host")}
    host = np.asarray([HOSTS[i % 6] if i != N_DOCS - 1 else "(no url)" for i in range(HELD, N_DOCS)])
    for name in ("a.example.com", "b.example.org", "c.example.net", "(no url)"):
        assert hosts[name]["documents"] == str((host == name).sum())
        assert hosts[name]["askllm-flan 20%"] == str((kept["askllm-flan"] & (host == name)).sum())
    sources = {r["source file"]: r["documents"] for r in page.table("composition", "source file")}
    assert sources == {"c4-train.00000.json.gz": str(40 - HELD), "c4-train.00001.json.gz": "20"}
    # the documents nearest the top-k threshold: kept ones at or above it, dropped ones below
    near = data.threshold_documents["askllm-flan 20%"]
    t = plans["askllm-flan"].rule.threshold_score
    assert [d["kept"] for d in near] == [True] * 3 + [False] * 3
    assert all(d["score"] >= t for d in near[:3]) and all(d["score"] <= t for d in near[3:])
    assert data.threshold_documents["random 20%"] == []
    assert "askllm-flan 20%: 6 documents nearest the threshold" in page.sections["composition"]["text"]


def test_histograms_draw_plan_thresholds_and_log_scale_wide_scores(partial):
    _, page, data, plans, _ = partial
    assert data.log_scales == {ASK_F: False, DEN_F: True}
    edges = np.asarray(data.histograms[DEN_F][1])
    assert np.allclose(edges[1:] / edges[:-1], edges[1] / edges[0])  # log-spaced bins
    assert data.thresholds[ASK_F] == [{"label": "askllm-flan 20%", "rule": "topk", "meaning": "keeps scores above it",
                                       "value": pytest.approx(plans["askllm-flan"].rule.threshold_score)}]
    assert data.thresholds[DEN_F][0]["value"] == pytest.approx(2 * plans["density-minilm"].rule.c)
    assert f"Log-scale x (the score spans more than three orders of magnitude): {DEN_F}." in \
        page.sections["histograms"]["text"]


def test_pipeline_health_from_the_manifests(partial):
    _, page, data, _, _ = partial
    rows = page.table("health", "job")
    assert [(r["job"], r["output"]) for r in rows] == [
        ("score random", "../random"), ("score askllm", "../askllm"), ("select", "../select-askllm")]
    random, askllm, select = rows
    assert random["dead-lettered"] == "2 empty_text: 1 invalid_json: 1" and random["units (reused)"] == "2 (1)"
    assert random["seconds"] == "12" and askllm["seconds"] == "45" and random["reconciled"] == "yes"
    assert select["excluded"] == "48 not_selected: 48"
    assert askllm["truncated"] == "75.0% 45 of 60, cut at 128 tokens"
    assert data.truncation["truncated/askllm"] == {"scorer": "askllm", "documents": 60, "truncated": 45, "rate": 0.75}
    assert "askllm cut 75% of the documents it scored" in page.sections["health"]["text"]


def test_stages_are_found_once_whether_paths_are_relative_or_absolute(partial, monkeypatch):
    from gristmill.eval import report_inputs
    monkeypatch.chdir(partial[0])  # manifests list absolute input paths; the spec here is relative
    stages = report_inputs.find_stages(["askllm"])
    assert [(os.path.basename(d), m["job"]) for d, m in stages] == [
        ("random", "score random"), ("askllm", "score askllm"), ("select-askllm", "select")]


def test_paths_are_relative_to_the_report(partial):
    _, page, data, _, _ = partial
    assert data.paths["scored"] == "../askllm" and data.paths["experiment"] == "../experiment"
    assert "Scored records: ../askllm; experiment directory ../experiment" in page.sections["summary"]["text"]
    plan_paths = [r["selection"] for r in page.table("composition", "selection")]
    assert plan_paths[0].endswith("../experiment/runs/tiny-s100/random-0.2/seed-0/plan.json")
    data_json = json.loads((partial[0] / "site" / "report.json").read_text())
    assert data_json["status"]["planned"] == 8 and data_json["coverage"]["x"] == DEN_F


def test_the_default_proxy_is_named_and_called_a_weak_stand_in():
    from gristmill.eval import report

    notes = report.model_notes(["score/askllm/smollm2-135m-instruct", "score/density/minilm"])
    assert len(notes) == 1 and "SmolLM2-135M-Instruct" in notes[0] and "weak stand-in" in notes[0]
    assert "FLAN-T5" in notes[0] and report.model_notes(["score/askllm/flan-t5-xl"]) == []


def test_the_proxy_note_is_given_once_for_all_its_scores():
    from gristmill.eval import report

    notes = report.model_notes(["score/askllm/smollm2-135m-instruct", "score/perplexity/smollm2-135m-instruct"])
    assert len(notes) == 1 and "score/askllm/smollm2-135m-instruct" in notes[0]
    assert "score/perplexity/smollm2-135m-instruct" in notes[0]
