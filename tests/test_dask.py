"""Dask as an engine: Beam's DaskRunner bug and gristmill's fix, then real jobs on a real cluster.

The cluster is `dask scheduler` and two single-threaded `dask worker` processes on 127.0.0.1
(tests/dask_cluster.py), started once for this module. Each job runs in-process and on the
cluster, and the two outputs must be the same bytes: every unit, version and dead-letter file,
and the manifests except the fields that name when, where and how the job ran (MANIFEST_EXCLUDED,
`options.output`).
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import sys
import threading
import time

import apache_beam as beam
import pytest

import gristmill.runners

pytest.importorskip("distributed", reason="the dask extra is not installed: pip install 'gristmill[dask]'")

from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402
from apache_beam.runners.dask import dask_runner, transform_evaluator  # noqa: E402

from gristmill import io, records  # noqa: E402
from gristmill.pipelines import kit, score_askllm, score_density, score_random, select  # noqa: E402
from gristmill.runners import dask as dask_engine  # noqa: E402
from tests.dask_cluster import DaskCluster  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
FILES, DOCS_PER_FILE, UNIT_RECORDS = 4, 10, 5  # 8 units
# Manifest fields that legitimately differ between two runs of one job: when it ran (started_at,
# finished_at and the history copy's name, which holds the time) and how (pipeline_options:
# runner, --dask_client_address, --dask_partition_size). `options.output` differs by design.
MANIFEST_EXCLUDED = ("started_at", "finished_at", "history", "pipeline_options")
UNIT_LOG = re.compile(r"pid (\d+): unit (\S+): \d+ written")
# A file that records the local generation (inode, mtime) of each unit file, which differs between
# any two runs: the unit index beside the manifest, compared without its `generations`.
STAMPED = "units.jsonl"


# --------------------------------------------------------------------------- the bug and the fix


class _BufferingFn(beam.DoFn):
    """Emits each element in process, and the bundle's sum in finish_bundle (as BatchElements does)."""

    def start_bundle(self):
        self.seen = []

    def process(self, x):
        self.seen.append(x)
        yield x

    def finish_bundle(self):
        yield beam.transforms.window.GlobalWindows.windowed_value(("sum", sum(self.seen)))


def _on_dask_bags(values, partition_size: int) -> list:
    """Translates Create(values) | ParDo(_BufferingFn) as DaskRunner does and computes it in this thread."""
    pipeline = beam.Pipeline(options=PipelineOptions())
    _ = pipeline | beam.Create(values) | beam.ParDo(_BufferingFn())
    pipeline.replace_all(dask_runner.dask_overrides())
    visitor = dask_runner.DaskRunner.to_dask_bag_visitor({"partition_size": partition_size})
    pipeline.visit(visitor)
    return list(visitor.bags.values())[-1].compute(scheduler="sync")


def test_beam_dask_runner_still_needs_the_fix(monkeypatch):
    """Fails the day Beam's own ParDo translation gets bundles right: then the patch can go."""
    monkeypatch.setitem(transform_evaluator.TRANSLATIONS, beam.ParDo, transform_evaluator.ParDo)
    one_bundle = _on_dask_bags([1, 2, 3, 4, 5], partition_size=5)
    assert one_bundle == [1, 2, 3, 4, 5], (
        f"apache-beam {beam.__version__}'s DaskRunner now keeps what finish_bundle emits ({one_bundle}); if the "
        f"assertion below fails too, remove gristmill.runners.dask's patch")
    three_bundles = _on_dask_bags([1, 2, 3, 4, 5], partition_size=2)  # [1, 2], [3, 4], [5]: one receiver
    assert len(three_bundles) > len(set(map(str, three_bundles))), (
        f"apache-beam {beam.__version__}'s DaskRunner no longer repeats one bundle's outputs in the next "
        f"({three_bundles})")


def test_the_fix_keeps_finish_bundle_outputs_and_isolates_bundles(monkeypatch):
    monkeypatch.setitem(transform_evaluator.TRANSLATIONS, beam.ParDo, dask_engine.PerBundleParDo)
    got = _on_dask_bags([1, 2, 3, 4, 5], partition_size=2)
    assert sorted(got, key=str) == sorted([1, 2, 3, 4, 5, ("sum", 3), ("sum", 7), ("sum", 5)], key=str)


def test_runner_dask_flags_and_refusals(monkeypatch):
    args = kit.with_runner_defaults(["--runner", "Dask", "--dask_client_address=tcp://h:8786"])
    assert args == ["--dask_client_address=tcp://h:8786", f"--runner={dask_engine.RUNNER}", "--dask_partition_size=1"]
    assert kit.with_runner_defaults(["--runner=DaskRunner", "--dask_npartitions=8"]) == [
        "--dask_npartitions=8", f"--runner={dask_engine.RUNNER}"]
    with pytest.raises(dask_engine.DaskRunnerError, match="written for apache-beam 2.77.0, and 9.9.9 is installed"):
        dask_engine.check_beam_version("9.9.9")
    monkeypatch.delitem(sys.modules, "gristmill.runners.dask")
    monkeypatch.delattr(gristmill.runners, "dask")
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(kit.UsageError, match=r"pip install 'gristmill\[dask\]'"):
        kit.with_runner_defaults(["--runner=dask"])


def test_tagged_outputs_are_refused():
    pipeline = beam.Pipeline(options=PipelineOptions())
    _ = pipeline | beam.Create([1]) | beam.ParDo(lambda x: [x]).with_outputs("odd", main="rest")
    with pytest.raises(dask_engine.DaskRunnerError, match="tagged outputs"):
        dask_engine.check_single_outputs(pipeline)


# --------------------------------------------------------------------------- a real cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """`dask scheduler` + two `dask worker --nthreads 1` on 127.0.0.1 free ports, stopped after the module."""
    with DaskCluster.start(str(tmp_path_factory.mktemp("dask-cluster")), workers=2) as started:
        yield started


TOPICS = ("The council voted on the budget for road repairs in {}.", "Bake the sourdough loaf at 230 degrees for {}.",
          "The violin sonata was first performed in {}.", "Tighten the lug nuts in a star pattern in {}.",
          "Mitochondria produce most of the cell's energy in {}.")
WORDS = ("spring", "autumn", "Vienna", "forty minutes", "the front", "muscle", "1853", "winter", "the rear", "yeast")


def _write_corpus(root, files: int, docs_per_file: int) -> str:
    """files JSON-lines files of short documents on a few topics (so densities differ); returns their glob."""
    for i in range(files):
        lines = [json.dumps({"text": TOPICS[(i + j) % len(TOPICS)].format(WORDS[(3 * i + j) % len(WORDS)]),
                             "url": f"https://example.com/{i}/{j}"}) + "\n" for j in range(docs_per_file)]
        (root / f"part-{i}.jsonl").write_text("".join(lines))
    return str(root / "*.jsonl")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """FILES files of DOCS_PER_FILE short documents: short, so the embedder compiles one length bucket."""
    return _write_corpus(tmp_path_factory.mktemp("dask-corpus"), FILES, DOCS_PER_FILE)


def _both(run, flags, root, cluster) -> tuple[str, str]:
    """Runs a job in-process into root/local and on the cluster into root/dask; returns the two directories."""
    local, on_dask = os.path.join(root, "local"), os.path.join(root, "dask")
    run([*flags, "--output", local])
    run([*flags, "--output", on_dask, "--runner", "dask", f"--dask_client_address={cluster.address}"])
    return local, on_dask


def _files(directory: str) -> dict[str, bytes]:
    found = {}
    for base, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(base, name)
            found[os.path.relpath(path, directory)] = open(path, "rb").read()
    return found


def _comparable(manifest: dict) -> dict:
    kept = {k: v for k, v in manifest.items() if k not in MANIFEST_EXCLUDED}
    kept["options"] = {k: v for k, v in manifest["options"].items() if k != "output"}
    kept["files"] = {k: v for k, v in manifest["files"].items() if os.path.basename(k) != STAMPED}
    return kept


def _without_generations(data: bytes) -> list:
    return [{k: v for k, v in json.loads(line).items() if k != "generations"} for line in data.splitlines()]


def assert_same_outputs(local: str, on_dask: str, killed: bool = False) -> dict:
    """Every file of the two outputs is the same bytes, manifests compared without MANIFEST_EXCLUDED.

    killed: a worker was killed mid-write, so its staging file (`.tmp-`, removed by the next run) may be left.
    """
    a, b = _files(local), _files(on_dask)
    if killed:
        b = {name: data for name, data in b.items() if io.TEMP_MARK not in name}
    history = {name for name in a.keys() | b.keys() if name.startswith(kit.MANIFESTS_DIR + "/")}
    assert sorted(a.keys() - history) == sorted(b.keys() - history)
    for name in a.keys() - history - {kit.MANIFEST_FILE}:
        if os.path.basename(name) == STAMPED:
            assert _without_generations(a[name]) == _without_generations(b[name]), name
        else:
            assert a[name] == b[name], f"{name} differs between the in-process and the Dask run"
    manifest = json.loads(b[kit.MANIFEST_FILE])
    assert _comparable(manifest) == _comparable(json.loads(a[kit.MANIFEST_FILE]))
    assert manifest["pipeline_options"]["runner"] == dask_engine.RUNNER
    assert list(records.iter_scored_records(on_dask)) == list(records.iter_scored_records(local))
    return manifest


def unit_writers(cluster: DaskCluster) -> dict[str, set[str]]:
    """Unit key -> the pids of the worker processes that logged writing it (tests/dask_cluster.py logs)."""
    writers: dict[str, set[str]] = {}
    for name in os.listdir(cluster.log_dir):
        if name.startswith("worker-") and name.endswith(".log"):
            with open(os.path.join(cluster.log_dir, name)) as f:
                for pid, unit in UNIT_LOG.findall(f.read()):
                    writers.setdefault(unit, set()).add(pid)
    return writers


@pytest.fixture(scope="module")
def random_runs(tmp_path_factory, corpus, cluster):
    """`score random` in-process and on the cluster: (local dir, dask dir)."""
    root = str(tmp_path_factory.mktemp("dask-random"))
    return _both(score_random.run, ["--input", corpus, "--seed=5", f"--unit_records={UNIT_RECORDS}"], root, cluster)


def test_score_random_is_byte_identical_and_spread_over_both_workers(random_runs, cluster):
    manifest = assert_same_outputs(*random_runs)
    keys = {u["key"] for u in manifest["units"]}
    assert len(keys) == FILES * math.ceil(DOCS_PER_FILE / UNIT_RECORDS)
    writers = unit_writers(cluster)
    assert keys <= writers.keys()
    assert len(set().union(*(writers[k] for k in keys))) == 2, writers  # both workers wrote units


def test_select_is_byte_identical(random_runs, tmp_path, cluster):
    local_input, _ = random_runs
    flags = ["--input", local_input, "--rule=topk", "--score=score/random/seed-5", "--rate=0.3",
             f"--unit_records={UNIT_RECORDS}"]
    local, on_dask = _both(select.run, flags, str(tmp_path), cluster)
    manifest = assert_same_outputs(local, on_dask)
    assert manifest["outputs"]["plan"] in manifest["files"]


def test_score_density_is_byte_identical(corpus, tmp_path, cluster):
    flags = ["--input", corpus, "--rows=16", "--buckets=256", "--seed=5", f"--unit_records={UNIT_RECORDS}"]
    local, on_dask = _both(score_density.run, flags, str(tmp_path), cluster)
    manifest = assert_same_outputs(local, on_dask)
    assert manifest["outputs"]["sketch"] in manifest["files"]


def test_score_askllm_is_byte_identical(corpus, tmp_path, cluster):
    flags = ["--input", corpus, "--model", os.path.join(FIXTURES, "t5", "tiny_v1_1"), "--model_name=tiny-t5",
             "--max_length=256", "--batch_size=3", f"--unit_records={UNIT_RECORDS}"]
    local, on_dask = _both(score_askllm.run, flags, str(tmp_path), cluster)
    manifest = assert_same_outputs(local, on_dask)
    assert manifest["counts"]["written"] == FILES * DOCS_PER_FILE  # every batch, the last of a bundle too


def test_a_worker_killed_mid_job_changes_nothing(tmp_path, cluster):
    corpus = _write_corpus(tmp_path, FILES, 400)  # 40 units a file: a worker is killed inside its bundle
    flags = ["--input", corpus, "--seed=7", "--unit_records=10"]
    local, on_dask = str(tmp_path / "local"), str(tmp_path / "dask")
    score_random.run([*flags, "--output", local])
    before = set(unit_writers(cluster))
    done: dict = {}

    def run_on_dask():
        try:
            done["manifest"] = score_random.run([*flags, "--output", on_dask, "--runner", "dask",
                                                 f"--dask_client_address={cluster.address}"])
        except Exception as err:  # reported by the assertion below
            done["error"] = err

    job = threading.Thread(target=run_on_dask)
    job.start()
    deadline, victim = time.monotonic() + 30, None
    while victim is None and time.monotonic() < deadline and job.is_alive():
        new = {unit: pids for unit, pids in unit_writers(cluster).items() if unit not in before}
        victim = next((int(pid) for pids in new.values() for pid in pids), None)
        time.sleep(0.02)
    assert victim is not None, "no worker wrote a unit of the job"
    os.kill(victim, signal.SIGKILL)
    assert not os.path.exists(os.path.join(on_dask, kit.MANIFEST_FILE)), "the job had finished before the kill"
    job.join(timeout=60)
    assert not job.is_alive() and "manifest" in done, done
    assert_same_outputs(local, on_dask, killed=True)
    redone = [unit for unit, pids in unit_writers(cluster).items()
              if unit not in before and str(victim) in pids and len(pids) > 1]
    assert redone, "no unit the killed worker wrote was written again by another worker"
    cluster.wait_for_workers(2)  # each worker's nanny restarts it: the cluster is whole again
    assert victim not in cluster.worker_pids().values()
