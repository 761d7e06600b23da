"""The Beam select job: plans across runners and shardings, chaining, Beam subset == tf.data subset."""

import glob
import json
import os

import apache_beam as beam
import numpy as np
import pytest

from gristmill import records as gm_records
from gristmill import sampling
from gristmill.pipelines import score_random, select
from gristmill.training import data as training_data

FEATURE = "score/random/seed-0"


@pytest.fixture(scope="module")
def scored(tmp_path_factory, embedded_glob):
    out = str(tmp_path_factory.mktemp("scored") / "random")
    score_random.run(["--input", embedded_glob, "--output", out])
    return out


def _select(tmp_path, name, scored_dir, *flags):
    out = str(tmp_path / name)
    manifest = select.run(["--input", scored_dir, "--output", out, *flags])
    ids = {r["id"] for r in gm_records.iter_scored_records(out)}
    return out, manifest, ids


def _plan(out):
    with open(os.path.join(out, select.PLAN_FILE)) as f:
        return f.read()


def test_topk_exact_and_plans_identical_across_runners_and_shardings(tmp_path, scored, embedded_glob):
    flags = ["--score", FEATURE, "--rule", "topk", "--rate", "0.2"]
    a, manifest, ids = _select(tmp_path, "a", scored, *flags)
    assert len(ids) == 200 and manifest["reconciled"]
    assert manifest["counts"]["excluded"]["not_selected"] == 800
    b, _, ids_multi = _select(tmp_path, "b", scored, *flags, "--workers=2")
    resharded = str(tmp_path / "one-shard")
    score_random.run(["--input", embedded_glob, "--output", resharded])
    c, _, ids_resharded = _select(tmp_path, "c", resharded, *flags)
    assert ids == ids_multi == ids_resharded
    assert _plan(a) == _plan(b) == _plan(c)
    scores = {r["id"]: r[FEATURE] for r in gm_records.iter_scored_records(scored)}
    assert min(scores[i] for i in ids) >= max(s for i, s in scores.items() if i not in ids)
    report = json.load(open(os.path.join(a, select.REPORT_FILE)))
    assert report["selected"] == 200 and report["realised_rate_documents"] == 0.2
    assert open(os.path.join(a, select.HISTOGRAM_FILE), "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_beam_subset_equals_tf_data_subset_and_selections_chain(tmp_path, scored):
    out, _, ids = _select(tmp_path, "ips", scored, "--score", FEATURE, "--rule", "ips", "--rate", "0.3")
    plan = select.load_plan(os.path.join(out, select.PLAN_FILE))
    assert training_data.selected_ids(scored, plan) == ids
    assert abs(len(ids) - 300) < 3 * 15  # IPS is Poisson sampling: within 3 standard deviations
    # the selected records are valid input to another selection (all features kept).
    _, manifest, ids2 = _select(tmp_path, "chained", out, "--rule", "random", "--rate", "0.5")
    assert ids2 <= ids and abs(len(ids2) - len(ids) * 0.5) <= 0.5
    # an existing plan applied by the Beam job selects the same subset again.
    _, _, again = _select(tmp_path, "replan", scored, "--plan", os.path.join(out, select.PLAN_FILE))
    assert again == ids


def test_approximate_plans_are_close(tmp_path, scored):
    _, manifest, ids = _select(tmp_path, "approx", scored, "--score", FEATURE, "--rule", "topk", "--rate", "0.25",
                               "--approximate")
    assert abs(len(ids) - 250) <= 5
    _, _, ids_ips = _select(tmp_path, "approx-ips", scored, "--score", FEATURE, "--rule", "ips", "--rate", "0.25",
                            "--approximate")
    assert abs(len(ids_ips) - 250) < 3 * 14


@pytest.mark.parametrize("flags, message", [
    (["--rule", "median", "--rate", "0.5", "--score", FEATURE], "unknown rule"),
    (["--rule", "topk", "--rate", "1.5", "--score", FEATURE], "rate must be a fraction in"),
    (["--rule", "topk", "--rate", "0", "--score", FEATURE], "rate must be a fraction in"),
    (["--rule", "topk", "--rate", "0.5"], "needs a score feature"),
])
def test_bad_flags(tmp_path, scored, flags, message):
    with pytest.raises(ValueError, match=message):
        select.run(["--input", scored, "--output", str(tmp_path / "x"), *flags])


def test_missing_score_feature(tmp_path, scored):
    flags = ["--rule", "topk", "--rate", "0.5", "--score", FEATURE]
    unscored = tmp_path / "unscored.jsonl"
    unscored.write_text("".join(json.dumps({"text": f"plain document {i}"}) + "\n" for i in range(10)))
    inputs = ["--input", scored, "--input", str(unscored)]
    with pytest.raises(Exception, match=f"has no score feature '{FEATURE}'"):
        select.run([*inputs, "--output", str(tmp_path / "x"), *flags])
    manifest = select.run([*inputs, "--output", str(tmp_path / "drop"), *flags, "--missing", "drop"])
    counts = manifest["counts"]
    assert counts["written"] == 500 and counts["excluded"] == {"missing_score": 10, "not_selected": 500}
    assert manifest["reconciled"] and counts["read"] == 1010


@pytest.mark.parametrize("rule, rate_by", [("topk", "documents"), ("bottomk", "tokens"), ("random", "tokens"),
                                           ("ips", "documents"), ("ips", "tokens")])
def test_the_bounded_exact_planner_gives_the_in_memory_exact_plan(tmp_path, scored, rule, rate_by):
    """The job plans in passes over (id, score, tokens) rows; the in-memory planner over the same rows agrees."""
    flags = ["--rule", rule, "--rate", "0.3", "--rate_by", rate_by, "--seed", "7", "--plan_only"]
    if rule != "random":
        flags += ["--score", FEATURE]
    out, _, _ = _select(tmp_path, rule, scored, *flags)
    config = select.SelectConfig(rule=rule, rate=0.3, rate_by=rate_by, seed=7,
                                 score=FEATURE if rule != "random" else None)
    rows = [(r["id"], select.score_of(r, config.score), select.tokens_of(r, None))
            for r in gm_records.iter_scored_records(scored)]
    assert _plan(out) == select.exact_plan(rows, config).to_json()


def test_documents_without_the_score_are_left_out_of_the_histograms_not_drawn_at_zero():
    plan = sampling.plan_from_scores("random", ["a", "b", "c"], rate=1.0, seed=0)
    columns = select.Columns(np.array([False, True, True]), np.array([np.nan, 0.0, 0.75]),
                             sampling.uniform_from_ids(["a", "b", "c"], 0), np.array([3, 3, 3]))
    outcomes = select._Outcomes()
    acc = outcomes.add_input(outcomes.create_accumulator(plan), columns, plan)
    result = outcomes.extract_output(acc, plan)
    assert sorted(result["before"]) == sorted(result["after"]) == [0.0, 0.75]
    assert result[select.SELECTED] == 3


def _columns_corpus(tmp_path, rng, n, kind, units=3):
    """Columns files of n documents in `units` units under tmp_path, and the ids, scores and tokens they hold."""
    ids = [f"doc-{i}" for i in range(n)]
    if kind == "ties":
        scores = rng.integers(1, 4, n) * 0.5
    elif kind == "capped":
        scores = np.where(rng.random(n) < 0.2, 1e-6, rng.lognormal(0.0, 1.0, n))
    else:
        scores = rng.lognormal(0.0, 1.0, n)
    scores = scores.astype(np.float32).astype(np.float64)
    tokens = rng.integers(0 if kind == "zero_tokens" else 1, 50, n)
    planning = select.Planning("ips", FEATURE, 7, None, "error")
    facts_units = []
    for k, part in enumerate(np.array_split(np.arange(n), units)):
        path = f"columns/u{k}.npz"
        columns = select.Columns(np.ones(len(part), dtype=bool), scores[part],
                                 sampling.uniform_from_ids([ids[i] for i in part], 7), tokens[part])
        os.makedirs(tmp_path / "columns", exist_ok=True)
        (tmp_path / path).write_bytes(select.columns_bytes(columns))
        facts_units.append({"unit": f"u{k}", "path": path, "documents": len(part), "tokens": int(tokens[part].sum()),
                            "missing": 0, "zero_tokens": int((tokens[part] == 0).sum()), "features": [FEATURE],
                            "first_missing": None, "invalid": None})
    return ids, scores, tokens, select.corpus_facts(facts_units, planning)


@pytest.mark.parametrize("rule", ["ips", "topk", "random"])
@pytest.mark.parametrize("kind, rate_by, rate", [("lognormal", "documents", 0.3), ("ties", "tokens", 0.6),
                                                 ("capped", "documents", 0.9), ("zero_tokens", "tokens", 0.25),
                                                 ("lognormal", "tokens", 1.0)])
def test_plan_selection_over_spilled_columns_equals_the_in_memory_plan(tmp_path, rule, kind, rate_by, rate):
    """PlanSelection in a TestPipeline, reading Columns files, gives plan_from_scores's plan byte for byte."""
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    rng = np.random.default_rng(hash((rule, kind, rate_by)) % 2**32)
    ids, scores, tokens, facts = _columns_corpus(tmp_path, rng, 700, kind)
    config = select.SelectConfig(rule=rule, score=FEATURE, rate=rate, rate_by=rate_by, seed=7)
    expected = sampling.plan_from_scores(rule, ids, scores, rate=rate, seed=7, tokens=tokens, rate_by=rate_by,
                                         score_feature=FEATURE, tokens_feature=sampling.PROXY_TOKENS)
    planning = select.Planning(rule, FEATURE, 7, None, "error")
    with TestPipeline() as p:
        plans = (p | beam.Create([facts]) | select.PlanSelection(config, str(tmp_path), planning)
                 | beam.Map(lambda plan: plan.to_json()))
        assert_that(plans, equal_to([expected.to_json()]))


def test_select_ips_in_a_test_pipeline_writes_the_in_memory_plan_and_its_columns(tmp_path, scored):
    """The job on a TestPipeline (bounded IPS by tokens); pass 1's Columns files hold each document's
    score, hash uniform and tokens."""
    from apache_beam.testing.test_pipeline import TestPipeline

    out = str(tmp_path / "ips-tp")
    with TestPipeline() as p:
        select.run(["--input", scored, "--output", out, "--score", FEATURE, "--rule", "ips", "--rate", "0.4",
                    "--rate_by", "tokens", "--seed", "3", "--plan_only", "--unit_records", "300"], test_pipeline=p)
    config = select.SelectConfig(rule="ips", score=FEATURE, rate=0.4, rate_by="tokens", seed=3)
    docs = list(gm_records.iter_scored_records(scored))
    rows = [(r["id"], select.score_of(r, FEATURE), select.tokens_of(r, None)) for r in docs]
    assert _plan(out) == select.exact_plan(rows, config).to_json()
    files = sorted(glob.glob(os.path.join(out, "versions", "*", select.COLUMNS_DIR, "*" + select.COLUMNS_SUFFIX)))
    assert len(files) == 4  # 1,000 documents in units of 300
    loaded = [select.read_columns(out, os.path.relpath(f, out)) for f in files]
    by_u = dict(zip(sampling.uniform_from_ids([r[0] for r in rows], 3).tolist(), rows))
    got = sorted((float(u), float(s), int(t)) for c in loaded for s, u, t in zip(c.score, c.u, c.tokens))
    assert got == sorted((u, float(np.float32(r[1])), r[2]) for u, r in by_u.items())
    assert all(c.scored.all() for c in loaded)


def test_ips_refuses_a_score_that_is_not_positive_naming_the_document(tmp_path):
    corpus = tmp_path / "scored.tfrecord"
    corpus.write_bytes(b"".join(gm_records.encode_tfrecord(gm_records.serialize(
        {"id": f"d{i}", "text": f"document {i}", FEATURE: float(i)})) for i in range(5)))
    with pytest.raises(Exception, match=r"ips: scores must be > 0.*'d0'"):
        select.run(["--input", str(corpus), "--output", str(tmp_path / "x"), "--score", FEATURE, "--rule", "ips",
                    "--rate", "0.5"])
