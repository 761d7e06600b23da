"""The Beam density job: crowded neighbourhoods score high, the saved sketch rescores identically."""

import json
import os

import numpy as np

from gristmill import records as gm_records
from gristmill.pipelines import score_density
from gristmill.scoring import density

FEATURE = "score/density/minilm"
SMALL = ["--rows=64", "--buckets=4096", "--seed=5"]


def _corpus(tmp_path):
    base = "The city council approved the new budget for road repairs and public parks on {}."
    crowded = [base.format(day) for day in ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")] * 3
    unique = ["Photosynthesis converts light energy into chemical energy stored in glucose.",
              "The sonata in B minor was composed in 1853 and dedicated to Robert Schumann.",
              "Use a torque wrench to tighten the lug nuts in a star pattern.",
              "Our bakery sells sourdough loaves every morning from seven o'clock.",
              "The Treaty of Westphalia ended the Thirty Years' War in 1648."]
    lines = [json.dumps({"text": t, "url": f"https://c/{i}"}) for i, t in enumerate(crowded)]
    lines += [json.dumps({"text": t, "url": f"https://u/{i}"}) for i, t in enumerate(unique)]
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path), len(crowded), len(unique)


def test_density_job_scores_sketch_and_rescoring(tmp_path):
    corpus, n_crowded, n_unique = _corpus(tmp_path)
    out = str(tmp_path / "out")
    manifest = score_density.run(["--input", corpus, "--output", out, *SMALL])
    assert manifest["counts"]["written"] == n_crowded + n_unique and manifest["reconciled"]
    scored = list(gm_records.iter_scored_records(out))
    crowded = [r[FEATURE] for r in scored if r["url"].startswith("https://c/")]
    unique = [r[FEATURE] for r in scored if r["url"].startswith("https://u/")]
    assert min(crowded) > max(unique)
    assert all(1 <= s <= n_crowded + n_unique for s in crowded + unique)  # each point collides with itself

    sketch_file = os.path.join(out, manifest["outputs"]["sketch"])
    assert manifest["outputs"]["sketch"].startswith("versions/") and manifest["outputs"]["sketch"] in manifest["files"]
    assert all(p.startswith("versions/") for p in manifest["outputs"]["records"])
    sketch = density.Sketch.load(sketch_file)
    assert sketch.num_points == n_crowded + n_unique
    assert sketch.counts.shape == (64, 4096) and (sketch.counts.sum(axis=1) == sketch.num_points).all()

    again = str(tmp_path / "again")
    score_density.run(["--input", corpus, "--output", again, *SMALL,
                       "--sketch", sketch_file])
    rescored = {r["id"]: r[FEATURE] for r in gm_records.iter_scored_records(again)}
    np.testing.assert_array_equal([rescored[r["id"]] for r in scored], [r[FEATURE] for r in scored])
