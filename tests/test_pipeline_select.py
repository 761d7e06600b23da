"""The Beam select job: plans across runners and shardings, chaining, Beam subset == tf.data subset."""

import json
import os

import pytest

from gristmill import records as gm_records
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
    assert _plan(out) == select._exact_plan(rows, config).to_json()


def test_documents_without_the_score_are_left_out_of_the_histograms_not_drawn_at_zero():
    assert select._scores_present((select.SELECTED, ("a", None, 3))) == []
    assert select._scores_present((select.NOT_SELECTED, ("b", 0.0, 3))) == [0.0]
    assert select._scores_present((select.SELECTED, ("c", 0.75, 3))) == [0.75]
