"""Fault injection: `kill -9` at every write point that matters, locally and on gs:// (a GCS API server).

Each case runs a first batch to a finished output, then starts the next batch as a real
`gristmill` process with GRISTMILL_CRASH_AT=<label>, which SIGKILLs itself in the middle of that
write (data staged, not yet published). After the kill:

(a) every file the finished batch's manifest lists is still there, byte for byte, and was not even
    rewritten; the top-level manifest.json is still that batch's (not checked after `--overwrite`,
    whose job is to remove it; for a curation: every step's listed files, the published selection
    and LATEST);
(b) a plain rerun of the same command finishes, leaves no staging file, and its manifest lists the
    same files with the same bytes as an uninterrupted run of the same batches (the manifest
    itself agrees, apart from timestamps, the command and the output directory's name).

The selected cases are prepared together: each killed process starts as soon as its first batch
is done, while this process runs the next case's (each import of Beam, TF and JAX costs
seconds); then each case checks and reruns in this process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

import pytest

from tests import faults

UNIT_RECORDS = 8
RANDOM = ["score", "random", f"--unit_records={UNIT_RECORDS}", "--seed=1"]
DENSITY = ["score", "density", f"--unit_records={UNIT_RECORDS}", "--rows=16", "--hashes_per_row=4", "--seed=2"]
# (scenario, crash label): which batch-2 command is killed, and where.
CASES = [
    ("random", "unit_records"),       # the first new unit's records
    ("random", "unit_dead_letters"),  # a new unit's dead letters
    ("random", "marker"),             # a new unit's marker (its files are written, the marker is not)
    ("random", "manifest"),           # the top-level manifest.json (everything else is written)
    ("noop", "manifest"),             # a rerun with nothing to do, as it replaces manifest.json
    ("overwrite", "overwrite"),       # half-way through --overwrite's removal of a finished run
    ("density", "embeddings"),        # a new unit's embedding cache
    ("density", "sketch"),            # the new version's sketch
    ("curate", "plan"),               # the select step's plan
    ("curate", "publish"),            # the published selection's first file
]
BACKENDS = ["local", "gs"]


# --------------------------------------------------------------------------- the corpus and the scenarios


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, str]:
    """Two files of real C4 documents with bad lines: a (22 lines, 2 bad), b (21 lines, 1 bad in its 2nd unit)."""
    root = tmp_path_factory.mktemp("corpus")
    faults.write_corpus(str(root / "a.jsonl"), 0, 20, {3: "this is not json", 13: json.dumps({"text": 5})})
    faults.write_corpus(str(root / "b.jsonl"), 20, 20, {11: "[1, 2, 3]"})
    return {"a": str(root / "a.jsonl"), "all": str(root / "*.jsonl"), "root": str(root)}


def curate_config(corpus: dict[str, str], workdir: str, batch: int, directory: str) -> str:
    """A curation config (random -> top 30%) over a (batch 1) or a and b (batch 2); returns its path."""
    raw = {"name": "faults", "input": corpus["a"] if batch == 1 else corpus["all"], "workdir": workdir,
           "flags": {"unit_records": UNIT_RECORDS},
           "steps": [{"name": "random", "job": "score random", "flags": {"seed": 3}},
                     {"name": "top30", "job": "select", "input_from": "random",
                      "flags": {"score": "score/random/seed-3", "rule": "topk", "rate": 0.3}}]}
    path = os.path.join(directory, f"curation-{batch}.json")
    with open(path, "w") as f:
        json.dump(raw, f)
    return path


def batches(scenario: str, corpus: dict[str, str], out: str, config_dir: str) -> list[list[str]]:
    """The commands of a scenario's batches into `out`; the last one is the one killed (and rerun)."""
    if scenario == "curate":
        return [["curate", "--config", curate_config(corpus, out, 1, config_dir), "--run_id", "b1"],
                ["curate", "--config", curate_config(corpus, out, 2, config_dir), "--run_id", "b2"]]
    job = DENSITY if scenario == "density" else RANDOM
    first = [*job, "--input", corpus["a"], "--output", out]
    second = [*job, "--input", corpus["all"], "--output", out]
    if scenario == "overwrite":  # a finished run of the same command, then the same command with --overwrite
        return [second, second + ["--overwrite"]]
    if scenario == "noop":  # a finished run, then the same command again (nothing left to do)
        return [first, second, second]
    return [first, second]


def published(workdir: str, run_id: str) -> dict[str, bytes]:
    """A published selection's files (plan, report, manifest) by relative path."""
    out = {}
    for name in ("plan.json", "report.json", "manifest.json"):
        path = faults.join(workdir, f"selections/{run_id}/{name}")
        if faults.exists(path):
            out[f"selections/{run_id}/{name}"] = faults.read(path)
    return out


def finished_state(scenario: str, out: str) -> tuple[dict[str, bytes], dict[str, Optional[int]]]:
    """What a finished batch left that later batches must not touch: every listed file, by relative path.

    For a job: its manifest's files, and manifest.json itself (the next batch replaces it only when
    it finishes). For a curation: every step's listed files and the published selection.
    """
    if scenario == "curate":
        files: dict[str, bytes] = {}
        for step in ("random", "top30"):
            step_dir = faults.join(out, f"steps/{step}")
            files.update({f"steps/{step}/{rel}": data for rel, data in faults.snapshot(step_dir).items()})
        run_id = faults.read(faults.join(out, "selections/LATEST")).decode().strip()
        files.update(published(out, run_id))
        files["selections/LATEST"] = faults.read(faults.join(out, "selections/LATEST"))
    else:
        files = faults.snapshot(out)
        files[faults.MANIFEST] = faults.read(faults.join(out, faults.MANIFEST))
    return files, faults.generations(out, files)


# --------------------------------------------------------------------------- uninterrupted references


class References:
    """The uninterrupted run of each scenario's batches, in a local directory (computed once, on demand)."""

    def __init__(self, root, corpus):
        self.root, self.corpus, self.done = root, corpus, {}

    def get(self, scenario: str) -> str:
        scenario = "random" if scenario in ("overwrite", "noop") else scenario
        if scenario not in self.done:
            out = str(self.root / scenario)
            for argv in batches(scenario, self.corpus, out, str(self.root)):
                faults.run_in_process(argv)
            self.done[scenario] = out
        return self.done[scenario]


@pytest.fixture(scope="module")
def references(tmp_path_factory, corpus) -> References:
    return References(tmp_path_factory.mktemp("reference"), corpus)


# --------------------------------------------------------------------------- the killed runs


class Case:
    """One (scenario, label, backend): its output, the finished state before the kill, the killed process."""

    def __init__(self, scenario: str, label: str, backend: str, out: str, config_dir: str, corpus: dict[str, str]):
        self.scenario, self.label, self.backend, self.out, self.config_dir = scenario, label, backend, out, config_dir
        self.corpus = corpus
        self.before: dict[str, bytes] = {}
        self.before_generations: dict[str, Optional[int]] = {}
        self.killed: Optional[subprocess.CompletedProcess] = None
        self.error: Optional[BaseException] = None

    @property
    def commands(self) -> list[list[str]]:
        return batches(self.scenario, self.corpus, self.out, self.config_dir)


class KilledRuns:
    """Prepares the selected cases once: each first batch in this process, each kill in a subprocess
    started as soon as its case is ready (two at a time), while this process prepares the next case."""

    def __init__(self, root, corpus, server_factory, wanted: set[tuple[str, str, str]]):
        self.root, self.corpus, self.server_factory = root, corpus, server_factory
        self.wanted = wanted
        self.cases: dict[tuple[str, str, str], Case] = {}
        self.prepared = False

    def env(self, backend: str) -> dict[str, str]:
        return self.server_factory().env() if backend == "gs" else {}

    def get(self, scenario: str, label: str, backend: str) -> Case:
        if not self.prepared:
            self.prepared = True
            self._prepare()
        return self.cases[(scenario, label, backend)]

    def _prepare(self) -> None:
        def kill(case: Case, env: dict[str, str]) -> None:
            log = os.path.join(case.config_dir, "killed.log")
            case.killed = faults.finish(faults.start(case.commands[-1], env, case.label, log), log)

        with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
            futures = []
            for backend in BACKENDS:
                if not any(w[2] == backend for w in self.wanted):
                    continue
                env = self.env(backend)
                with faults.environment(env):
                    for scenario, label in CASES:
                        if (scenario, label, backend) in self.wanted:
                            case = self._first_batches(scenario, label, backend)
                            if case.error is None:
                                futures.append(pool.submit(kill, case, env))
            for future in futures:
                future.result()

    def _first_batches(self, scenario: str, label: str, backend: str) -> Case:
        local = self.root / backend / f"{scenario}-{label}"
        local.mkdir(parents=True)
        out = f"gs://{self.server_factory().new_bucket()}/{scenario}" if backend == "gs" else str(local / "out")
        case = self.cases[(scenario, label, backend)] = Case(scenario, label, backend, out, str(local), self.corpus)
        try:
            for argv in case.commands[:-1]:
                faults.run_in_process(argv)
            case.before, case.before_generations = finished_state(scenario, out)
        except Exception as err:  # noqa: BLE001 (reported by the case's own test)
            case.error = err
        return case


@pytest.fixture(scope="module")
def killed_runs(tmp_path_factory, corpus, request) -> KilledRuns:
    wanted = {(item.callspec.params["scenario"], item.callspec.params["label"], item.callspec.params["backend"])
              for item in request.session.items
              if item.module is request.module and hasattr(item, "callspec") and "label" in item.callspec.params}
    return KilledRuns(tmp_path_factory.mktemp("killed"), corpus, lambda: request.getfixturevalue("gcs_server"),
                      wanted)


# --------------------------------------------------------------------------- the test


def rerun(case: Case) -> None:
    """A plain rerun of the killed command; for --overwrite, first without it (it must not pass off a
    half-removed run as finished), then the same command."""
    argv = case.commands[-1]
    if case.scenario == "overwrite":
        plain = [a for a in argv if a != "--overwrite"]
        try:
            faults.run_in_process(plain)
        except Exception:  # noqa: BLE001 (refusing is fine: the run is half removed)
            pass
        else:  # it finished: then it must be the complete, verified output
            return
    faults.run_in_process(argv)


def assert_same_curation(workdir: str, reference: str) -> None:
    """Both steps list the same files with the same bytes; the same selection is published as LATEST."""
    faults.assert_same_output(faults.join(workdir, "steps/random"), faults.join(reference, "steps/random"))
    # select's unit keys hash its input files' identities (paths, times), which differ between work directories
    faults.assert_same_output(faults.join(workdir, "steps/top30"), faults.join(reference, "steps/top30"),
                              names_by_content=True)
    assert faults.read(faults.join(workdir, "selections/LATEST")) == b"b2\n"
    mine, theirs = published(workdir, "b2"), published(reference, "b2")
    assert sorted(mine) == sorted(theirs)
    for name in ("plan.json", "report.json"):
        assert mine[f"selections/b2/{name}"] == theirs[f"selections/b2/{name}"], f"selections/b2/{name} differs"
    assert selection_summary(mine["selections/b2/manifest.json"], workdir) == \
        selection_summary(theirs["selections/b2/manifest.json"], reference)


def selection_summary(data: bytes, workdir: str) -> dict[str, Any]:
    """What a published selection manifest says that two equal curations agree on."""
    found = faults.comparable_manifest(json.loads(data), workdir)
    steps = [{"name": s["name"], "job": s["job"], "reconciled": s["reconciled"],
              "counts": {k: v for k, v in s["counts"].items() if k != "units_reused"}} for s in found["steps"]]
    # select's file names hash its inputs' identities, and its history manifest's name holds the time
    text = faults.HASH_NAME.sub("<hash>", json.dumps(found["selection"], sort_keys=True))
    selection = json.loads(re.sub(r"\d{8}T\d{6}", "<time>", text))
    selection.get("counts", {}).pop("units_reused", None)  # a resumed select step reuses its units
    return {"name": found["name"], "run_id": found["run_id"], "config": found["config"], "steps": steps,
            "selection": selection}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scenario, label", CASES, ids=[f"{s}-{lab}" for s, lab in CASES])
def test_a_kill_leaves_the_finished_output_alone_and_a_rerun_equals_an_uninterrupted_run(
        scenario, label, backend, killed_runs, references):
    case = killed_runs.get(scenario, label, backend)
    if case.error is not None:
        raise case.error
    faults.check_killed(case.killed, label)
    with faults.environment(killed_runs.env(backend)):
        if backend == "local" and label != "overwrite":  # the kill came mid-write: the staged data is there
            staged = [rel.split(faults.TEMP_MARK)[0] for rel in faults.temporaries(case.out)]
            from gristmill import io
            assert any(io.crash_label(faults.join(case.out, rel)) == label for rel in staged), (
                f"no staged {label} write was left by the kill (staging files: {staged})")
        if scenario != "overwrite":
            faults.assert_unchanged(case.out, case.before, case.before_generations,
                                    f"after a kill at {label} ({backend})")
        rerun(case)
        assert not faults.temporaries(case.out), "the rerun left staging files"
        reference = references.get(scenario)
        if scenario == "curate":
            assert_same_curation(case.out, reference)
            # and the first batch's published selection is still the same, byte for byte
            faults.assert_unchanged(case.out, {k: v for k, v in case.before.items() if k.startswith("selections/b1")},
                                    {k: v for k, v in case.before_generations.items() if k.startswith("selections/b1")},
                                    "the first published selection after the rerun")
        else:
            faults.assert_same_output(case.out, reference)
            manifest = faults.manifest(case.out)
            assert manifest["reconciled"] and manifest["counts"]["read"] == 43
    if backend == "local":
        shutil.rmtree(case.config_dir, ignore_errors=True)
