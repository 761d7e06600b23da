"""gristmill curate: config validation, a random -> select chain run in two incremental batches, publishing."""

import json
import os

import pytest

from gristmill import cli, curate, io, records, sampling

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")


def _write_corpus(path, start, count):
    with open(path, "w") as f:
        for i in range(start, start + count):
            f.write(json.dumps({"text": f"Document {i} is about topic {i % 7} and little else.",
                                "url": f"https://example.com/{i}"}) + "\n")


def _chain(tmp_path, **extra):
    return {"name": "daily-test", "input": str(tmp_path / "corpus" / "*.jsonl"), "workdir": str(tmp_path / "work"),
            "flags": {"unit_records": 20},
            "steps": [{"name": "random", "job": "score random", "flags": {"seed": 3}},
                      {"name": "top30", "job": "select", "input_from": "random",
                       "flags": {"score": "score/random/seed-3", "rule": "topk", "rate": 0.3}}], **extra}


# --------------------------------------------------------------------------- config


def test_parse_config_types_and_defaults(tmp_path):
    config = curate.parse_config(_chain(tmp_path))
    assert config.input == (str(tmp_path / "corpus" / "*.jsonl"),)
    assert [s.name for s in config.steps] == ["random", "top30"]
    assert config.published_step().name == "top30"
    assert curate.step_argv(config, config.steps[1]) == [
        f"--input={tmp_path / 'work' / 'steps' / 'random'}", f"--output={tmp_path / 'work' / 'steps' / 'top30'}",
        "--unit_records=20", "--score=score/random/seed-3", "--rule=topk", "--rate=0.3"]
    assert curate.step_argv(config, config.steps[0], ("--unit_records=5", "--runner=DirectRunner"))[-3:] == [
        "--seed=3", "--unit_records=5", "--runner=DirectRunner"]  # command-line flags come last, so they win


def test_command_line_flags_that_curate_owns_are_refused(tmp_path):
    with pytest.raises(curate.CurationError, match="output are set by curate"):
        curate.run(["--config", str(tmp_path / "none.json"), "--output=x", "--runner=DirectRunner"])


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c.update(outputs="x"), "unknown key(s) 'outputs'"),
    (lambda c: c.pop("workdir"), "missing required key(s) 'workdir'"),
    (lambda c: c["steps"][0].update(job="score nothing"), "unknown job 'score nothing'"),
    (lambda c: c["steps"][0].update(inputs="x"), "step 1: unknown key(s) 'inputs'"),
    (lambda c: c["steps"][1].update(input_from="askllm"), "input_from 'askllm' names no step"),
    (lambda c: c["steps"].reverse(), "input_from 'random' is not an earlier step"),
    (lambda c: c["steps"][1].update(name="random"), "two steps have this name"),
    (lambda c: c["steps"][1].update(name="../x"), "must be letters, digits"),
    (lambda c: c["steps"][0]["flags"].update(output="/tmp/x"), "flag(s) output are set by curate"),
    (lambda c: c["steps"].pop(), "no select step"),
    (lambda c: c.update(publish="random"), "publish 'random' is not a select step"),
])
def test_parse_config_refuses_bad_configs_with_clear_errors(tmp_path, mutate, message):
    raw = _chain(tmp_path)
    mutate(raw)
    with pytest.raises(curate.CurationError, match=None) as err:
        curate.parse_config(raw)
    assert message in str(err.value)


def test_flag_args():
    assert curate.flag_args({"rate": 0.2, "share_model": True, "resume": False, "keep_fields": ["a", "b"],
                             "model": None}) == ["--rate=0.2", "--share_model", "--resume=false", "--keep_fields=a,b"]


@pytest.mark.parametrize("name", ["curation.json", "curation.yaml"])
def test_the_examples_are_valid_and_agree(name):
    config, raw = curate.load_config(os.path.join(EXAMPLES, name))
    assert [s.job for s in config.steps] == ["score askllm", "score density", "select"]
    other = "curation.yaml" if name.endswith(".json") else "curation.json"
    assert raw == curate.load_config(os.path.join(EXAMPLES, other))[1]


def test_a_broken_config_file_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(curate.CurationError, match="not valid YAML"):
        curate.load_config(str(path))


# --------------------------------------------------------------------------- a chain, two batches


def test_two_batches_are_incremental_and_publish_versioned_selections(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    _write_corpus(corpus / "a.jsonl", 0, 50)
    _write_corpus(corpus / "b.jsonl", 50, 50)
    config_path = tmp_path / "curation.json"
    config_path.write_text(json.dumps(_chain(tmp_path)))
    work = str(tmp_path / "work")

    assert cli.main(["curate", "--config", str(config_path), "--run_id", "batch-1"]) == 0
    assert curate.latest(work) == "batch-1"
    first = io.read_json(os.path.join(work, "selections", "batch-1", "manifest.json"))
    assert [s["name"] for s in first["steps"]] == ["random", "top30"]
    assert first["steps"][0]["counts"]["written"] == 100 and first["steps"][0]["counts"]["units_reused"] == 0
    assert first["selection"]["counts"]["written"] == 30
    assert first["config"] == json.loads(config_path.read_text())
    plan1 = sampling.Plan.from_json(io.read_text(os.path.join(work, "selections", "batch-1", "plan.json")))
    assert plan1.rate == pytest.approx(0.3)

    # The next night: two more files. Only their units are scored; select plans again over all 200.
    _write_corpus(corpus / "c.jsonl", 100, 50)
    _write_corpus(corpus / "d.jsonl", 150, 50)
    second = curate.run(["--config", str(config_path)])
    run_id = second["run_id"]
    assert run_id != "batch-1" and curate.latest(work) == run_id
    score = second["steps"][0]
    assert score["counts"]["written"] == 200
    assert score["counts"]["units_reused"] == 6 and score["counts"]["units_total"] == 12  # 3 units a file
    assert len(score["inputs"]) == 4
    assert second["selection"]["counts"]["written"] == 60
    assert os.path.exists(os.path.join(work, "selections", "batch-1", "plan.json"))  # the old version stays

    # What train consumes: the plan, applied to the data files the manifest lists, gives the selection.
    plan = sampling.Plan.from_json(io.read_text(os.path.join(work, "selections", run_id, "plan.json")))
    data = second["selection"]["data"]
    docs = [r for path in data for r in records.iter_scored_records(path)]
    assert sorted(r["id"] for r in docs) == sorted(r["id"] for r in records.iter_scored_records(
        os.path.join(work, "steps", "random")))
    assert len(docs) == 200
    kept = sorted(r["id"] for r in docs if sampling.keep(plan, r["id"], r["score/random/seed-3"]))
    selected = sorted(r["id"] for r in records.iter_scored_records(os.path.join(work, "steps", "top30")))
    assert len(kept) == 60 and kept == selected
    # The first batch's data files are still there, unchanged: its published selection stays usable,
    # and re-applying its plan to them gives its selected records, forever.
    for path, info in {**first["selection"]["files"]}.items():
        assert io.verify(path, info) is None, path
    assert set(first["selection"]["files"]) == set(first["selection"]["data"] + first["selection"]["selected_records"])
    again = sorted(r["id"] for path in first["selection"]["data"] for r in records.iter_scored_records(path)
                   if sampling.keep(plan1, r["id"], r["score/random/seed-3"]))
    assert len(again) == 30 and again == sorted(
        r["id"] for path in first["selection"]["selected_records"] for r in records.iter_scored_records(path))
    assert io.exists(first["selection"]["select_manifest"])

    with pytest.raises(curate.CurationError, match="already published"):
        curate.run(["--config", str(config_path), "--run_id", "batch-1"])


def test_a_changed_scorer_config_is_refused_with_advice(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    _write_corpus(corpus / "a.jsonl", 0, 10)
    raw = _chain(tmp_path)
    config = curate.parse_config(raw)
    curate.run_step(config, config.steps[0])
    raw["steps"][0]["flags"]["seed"] = 4
    changed = curate.parse_config(raw)
    with pytest.raises(curate.CurationError, match="give the step a new name"):
        curate.run_step(changed, changed.steps[0])
