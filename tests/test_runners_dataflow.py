"""Every job translated by Beam's DataflowRunner offline (`--dry_run=True`), and the accelerator syntax.

A dry run builds the Dataflow job without submitting it: Beam round-trips the pipeline through
the runner API (pickling and unpickling every DoFn), applies Dataflow's overrides, resolves the
Docker environments and builds the Job message, then returns a finished result. The translated
pipeline is `pipeline.runner.proto_pipeline`: its environments name the worker container image,
and a transform's resource hints live on the environment it runs in.

`dry_run` below is the reusable helper: it builds a gristmill job's pipeline under DataflowRunner
and returns the translation. Every Beam job the CLI offers is translated.

The flex template launch is run for real except for Dataflow's service: the launcher's `main` with
`--template_location` on a local path makes DataflowRunner stage the pipeline (to a bucket on the
test GCS server, `tests/gcs_server.py`) and write the job file locally, and gristmill returns
without waiting. Needs the `dataflow` extra (apache-beam[gcp]); no network beyond 127.0.0.1, no cloud.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import logging
import os
import re

import apache_beam as beam
import pytest
from apache_beam.internal import pickler
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions
from apache_beam.portability import common_urns, python_urns
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.dataflow.dataflow_runner import DataflowPipelineResult, DataflowRunner

from gristmill import cli, documents, io, lease, records
from gristmill.pipelines import kit, registry, resources, score_random

ROOT = os.path.join(os.path.dirname(__file__), "..")
LAUNCHER = os.path.join(ROOT, "deploy", "dataflow", "launcher.py")
METADATA = os.path.join(ROOT, "deploy", "dataflow", "metadata.json")
DOCKERFILES = {name: os.path.join(ROOT, "deploy", "dataflow", f"{name}.Dockerfile") for name in ("worker", "launcher")}
IMAGE = "us-central1-docker.pkg.dev/gristmill-dry-run/gristmill/worker:test"
GPU = "type:nvidia-l4;count:1;install-nvidia-driver"
ACCELERATOR_URN = common_urns.resource_hints.ACCELERATOR.urn
# Valid-looking values: Beam's option validator rejects malformed project ids and bucket names, and
# with no usable temp/staging location it tries to create a default bucket (a network call).
DRY_RUN_FLAGS = ("--runner=DataflowRunner", "--dry_run=True", "--project=gristmill-dry-run",
                 "--region=us-central1", "--temp_location=gs://gristmill-dry-run/tmp",
                 "--staging_location=gs://gristmill-dry-run/staging")


@dataclasses.dataclass(frozen=True)
class Translation:
    """What Dataflow would receive for a job: the runner API pipeline and the Job message."""

    proto: beam_runner_api_pb2.Pipeline
    job: object

    def transforms(self) -> dict[str, beam_runner_api_pb2.PTransform]:
        """Every transform that runs in an SDK environment, by full label (composites included)."""
        return {t.unique_name: t for t in self.proto.components.transforms.values()
                if t.environment_id and t.unique_name}

    def hints(self, label: str) -> dict[str, bytes]:
        """The resource hints of a transform (those of the environment it runs in)."""
        env_id = self.transforms()[label].environment_id
        return dict(self.proto.components.environments[env_id].resource_hints)

    def with_hint(self, urn: str) -> dict[str, bytes]:
        """Label -> hint value of every transform carrying the resource hint `urn`."""
        found = {label: self.hints(label).get(urn) for label in self.transforms()}
        return {label: value for label, value in found.items() if value is not None}

    def images(self) -> set[str]:
        """The container image of every environment."""
        out = set()
        for env in self.proto.components.environments.values():
            assert env.urn == common_urns.environments.DOCKER.urn, env.urn
            out.add(beam_runner_api_pb2.DockerPayload.FromString(env.payload).container_image)
        return out

    def unpickle_all(self) -> int:
        """Unpickles every pickled DoFn and CombineFn, as a worker does; returns how many there were."""
        n = 0
        for t in self.proto.components.transforms.values():
            if t.spec.urn == common_urns.primitives.PAR_DO.urn:
                fn = beam_runner_api_pb2.ParDoPayload.FromString(t.spec.payload).do_fn
            elif t.spec.urn in (common_urns.composites.COMBINE_PER_KEY.urn,
                                common_urns.combine_components.COMBINE_GROUPED_VALUES.urn):
                fn = beam_runner_api_pb2.CombinePayload.FromString(t.spec.payload).combine_fn
            else:
                continue
            if fn.urn in (python_urns.PICKLED_DOFN_INFO, python_urns.PICKLED_COMBINE_FN):
                assert pickler.loads(fn.payload) is not None, t.unique_name
                n += 1
        return n


def dry_run(job_run, argv: list[str]) -> Translation:
    """Builds a gristmill job under DataflowRunner with `--dry_run=True` and returns its translation.

    job_run: a job's `run(argv, save_main_session, test_pipeline)`. The job builds onto a pipeline
    made here and leaves running it to the caller (the kit's contract for test pipelines), so its
    runner, and the translation the runner keeps, can be inspected afterwards.
    """
    argv = [*argv, *DRY_RUN_FLAGS]
    pipeline = beam.Pipeline(runner=DataflowRunner(), options=PipelineOptions(argv))
    assert job_run(argv, test_pipeline=pipeline) is None
    pipeline.run().wait_until_finish()  # a dry run: translated, not submitted
    return Translation(pipeline.runner.proto_pipeline, pipeline.runner.job)


@pytest.fixture(scope="module")
def scored_dir(tmp_path_factory, embedded_glob):
    """A finished gristmill output directory (60 documents scored by Random), the input of select."""
    out = str(tmp_path_factory.mktemp("scored") / "random")
    score_random.run(["--input", embedded_glob, "--output", out, "--limit=60"])
    return out


# Every Beam job the CLI offers (`gristmill.pipelines.registry` + select) -> the module that runs it.
CLI_JOBS = {" ".join(words): module for words, (module, _, _) in cli.COMMANDS.items()
            if module.startswith("gristmill.pipelines.")}
# The flags each job is built with besides --input and --output: a scorer's demo flags from the
# registry (sized for the demo; nothing runs in a dry run), select's own.
JOB_FLAGS = {
    **{info.job: list(info.demo_flags) for info in registry.SCORERS.values()},
    "select": ["--score=score/random/seed-0", "--rule=topk", "--rate=0.5"],
}
JOBS = {name: (importlib.import_module(CLI_JOBS[name]).run, flags) for name, flags in JOB_FLAGS.items()}
MODEL_JOBS = tuple(name for name in JOBS if name not in ("score random", "select"))


def job_argv(name: str, tmp_path, embedded_glob, scored_dir) -> tuple:
    run, flags = JOBS[name]
    source = scored_dir if name == "select" else embedded_glob
    return run, ["--input", source, "--output", str(tmp_path / "out"), *flags]


# ------------------------------------------------------------------------------------ translation


def test_the_translation_covers_every_beam_job_the_cli_offers():
    assert set(JOB_FLAGS) == set(CLI_JOBS)


@pytest.mark.parametrize("name", list(JOBS))
def test_every_job_translates_pickles_and_runs_in_the_given_container(name, tmp_path, embedded_glob, scored_dir):
    run, argv = job_argv(name, tmp_path, embedded_glob, scored_dir)
    translation = dry_run(run, [*argv, f"--sdk_container_image={IMAGE}"])
    assert translation.images() == {IMAGE}
    assert translation.unpickle_all() >= 3
    assert translation.job.proto.type_.name == "JOB_TYPE_BATCH"
    labels = list(translation.transforms())
    assert any("Read" in label for label in labels) and any("Write" in label for label in labels), labels
    assert not translation.with_hint(ACCELERATOR_URN)
    assert not os.path.exists(os.path.join(str(tmp_path / "out"), "manifest.json"))  # nothing ran


@pytest.mark.parametrize("name", MODEL_JOBS)
def test_accelerator_hint_is_on_the_model_step_only(name, tmp_path, embedded_glob, scored_dir):
    run, argv = job_argv(name, tmp_path, embedded_glob, scored_dir)
    translation = dry_run(run, [*argv, f"--sdk_container_image={IMAGE}", "--accelerator", GPU])
    hinted = translation.with_hint(ACCELERATOR_URN)
    assert hinted, "no transform carries the accelerator hint"
    assert set(hinted.values()) == {GPU.encode("ascii")}
    assert all("Inference" in label for label in hinted), sorted(hinted)
    io_steps = [label for label in translation.transforms() if "Read" in label or "Write" in label]
    assert io_steps and not set(io_steps) & set(hinted)
    # Right fitting: the GPU environment is a copy of the default one, same container.
    assert len(translation.proto.components.environments) >= 2 and translation.images() == {IMAGE}


def test_a_job_without_a_model_requests_no_accelerator(tmp_path, embedded_glob, scored_dir):
    run, argv = job_argv("score random", tmp_path, embedded_glob, scored_dir)
    translation = dry_run(run, [*argv, "--accelerator", GPU])
    assert not translation.with_hint(ACCELERATOR_URN)


def test_a_bad_accelerator_fails_before_the_pipeline_is_built(tmp_path, embedded_glob):
    with pytest.raises(ValueError, match="count"):
        score_random.run(["--input", embedded_glob, "--output", str(tmp_path / "out"),
                          "--accelerator", "type:nvidia-l4;install-nvidia-driver", *DRY_RUN_FLAGS])


# ------------------------------------------------------------------------------------ flex template


def _launcher():
    spec = importlib.util.spec_from_file_location("gristmill_flex_launcher", LAUNCHER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", list(JOBS))
def test_flex_template_launcher_builds_each_job_without_submitting(name, tmp_path, embedded_glob, scored_dir):
    # The flex template passes every parameter as --name=value; the runner is not among them.
    _, argv = job_argv(name, tmp_path, embedded_glob, scored_dir)
    flags = [f for f in DRY_RUN_FLAGS if not f.startswith("--runner")]
    assert _launcher().main([f"--command={name}", *argv, *flags, f"--sdk_container_image={IMAGE}"]) == 0
    assert not io.exists(io.join(str(tmp_path / "out"), "manifest.json"))


@pytest.fixture
def offline_launch(monkeypatch):
    """A template launch with nothing beyond 127.0.0.1, and proof that gristmill neither waits nor reads a manifest."""
    # Beam asks the bucket for its soft-delete policy with default credentials (retried for ~20 s
    # when there are none); the check only warns, and Beam itself skips it in dry runs.
    monkeypatch.setattr(GoogleCloudOptions, "_warn_if_soft_delete_policy_enabled", lambda self, name: None)

    def must_not(what):
        def fail(*args, **kwargs):
            raise AssertionError(f"a template launch {what}")
        return fail
    monkeypatch.setattr(DataflowPipelineResult, "wait_until_finish", must_not("waited for the job"))
    monkeypatch.setattr(records, "read_manifest", must_not("read the manifest"))


def test_flex_template_launch_stages_the_job_locally_and_returns(tmp_path, embedded_glob, gcs_server, gcs_bucket,
                                                                 offline_launch, caplog):
    # What Dataflow's launcher does: run launcher.py with the parameters and a --template_location
    # (there gs://.../template_launches/<id>/job_object; a local file here), then submit that file.
    out, job_file = str(tmp_path / "out"), str(tmp_path / "job.json")
    caplog.set_level(logging.INFO, logger="gristmill")
    argv = ["--command=score random", f"--input={embedded_glob}", f"--output={out}", "--limit=60",
            "--project=gristmill-test", "--region=us-central1", "--no_auth",
            f"--temp_location={gcs_bucket}/tmp", f"--staging_location={gcs_bucket}/staging",
            f"--template_location={job_file}", f"--sdk_container_image={IMAGE}"]
    assert _launcher().main(argv) == 0

    with open(job_file) as f:
        job = json.load(f)
    (pool,) = job["environment"]["workerPools"]
    assert {image["containerImage"] for image in pool["sdkHarnessContainerImages"]} == {IMAGE}
    assert job["environment"]["sdkPipelineOptions"]["options"]["template_location"] == job_file
    # The pipeline it points to, as staged (on the test GCS server): every DoFn in the worker image.
    staged = job["environment"]["sdkPipelineOptions"]["options"]["pipelineUrl"]
    assert staged.startswith(f"{gcs_bucket}/staging/")
    bucket, name = staged[len("gs://"):].split("/", 1)
    proto = beam_runner_api_pb2.Pipeline.FromString(gcs_server.client().bucket(bucket).blob(name).download_as_bytes())
    translation = Translation(proto, job)
    assert translation.images() == {IMAGE} and translation.unpickle_all() >= 3

    assert not os.path.exists(os.path.join(out, records.MANIFEST_FILE))  # the job's last step writes it
    assert not os.path.exists(os.path.join(out, lease.LEASE_FILE))  # the launcher exits: no lease left
    lease.acquire(out, "the next writer").release()
    staged_lines = [r.getMessage() for r in caplog.records if "staged as a Dataflow template" in r.getMessage()]
    assert len(staged_lines) == 1 and job_file in staged_lines[0] and "last step" in staged_lines[0]


def test_a_template_launch_is_recognised_by_its_location_or_the_launcher_file(monkeypatch, tmp_path):
    def staged(*flags):
        return kit.staged_only(PipelineOptions(list(flags)))
    assert staged("--runner=DataflowRunner", "--template_location=gs://b/staging/template_launches/1/job_object")
    assert staged("--runner=DataflowRunner", "--template_location=/tmp/job.json", "--dry_run=True") is None
    assert staged("--runner=DataflowRunner") is None
    py_file = str(tmp_path / "launcher.py")
    monkeypatch.setenv(kit.FLEX_TEMPLATE_PY_FILE, py_file)
    assert staged("--runner=DataflowRunner") is None  # the launcher image's env, another program (curate on Cloud Run)
    monkeypatch.setattr("sys.argv", [py_file, "--command=select"])
    assert "flex template launcher" in staged("--runner=DataflowRunner")
    assert staged(f"--runner={kit.LOCAL_RUNNER}") is None


def test_flex_template_launcher_defaults_to_dataflow_and_needs_a_command():
    launcher = _launcher()
    assert launcher.command_line(["--command=score askllm", "--input=gs://b/c4/*.json.gz"]) == [
        "score", "askllm", "--input=gs://b/c4/*.json.gz", "--runner=DataflowRunner"]
    assert launcher.command_line(["--runner=DirectRunner", "--command", "select"]) == [
        "select", "--runner=DirectRunner"]
    with pytest.raises(SystemExit, match="--command"):
        launcher.command_line(["--input=x"])
    with pytest.raises(SystemExit, match="train"):
        launcher.command_line(["--command=train"])


def test_curate_is_not_a_template_and_says_where_it_runs():
    launcher = _launcher()
    assert sorted(launcher.launchable()) == sorted(CLI_JOBS)
    with pytest.raises(SystemExit, match="Cloud Run job or an Airflow task") as err:
        launcher.command_line(["--command=curate", "--config=gs://b/c.json"])
    assert "docs/deploy.md" in str(err.value)
    with open(os.path.join(ROOT, "docs", "deploy.md")) as f:
        assert "curate on a schedule" in f.read().lower()


def _dockerfile(name: str) -> str:
    with open(DOCKERFILES[name]) as f:
        return f.read()


def _arg_default(text: str, name: str) -> str:
    return re.search(rf"^ARG {name}=(\S+)$", text, re.MULTILINE).group(1)


def test_images_pin_the_beam_that_builds_the_job_and_a_dated_launcher_base():
    installed = beam.__version__
    for name in DOCKERFILES:
        text = _dockerfile(name)
        assert _arg_default(text, "BEAM_VERSION") == installed, name  # bump both with apache-beam
        froms = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
        assert froms[-1] == "apache/beam_python3.11_sdk:${BEAM_VERSION}", name
        assert '"apache-beam[gcp]==${BEAM_VERSION}"' in text, name  # pip keeps the image's Beam
        assert "assert apache_beam.__version__ == '${BEAM_VERSION}'" in text, name
    base = _arg_default(_dockerfile("launcher"), "LAUNCHER_BASE")
    assert re.fullmatch(r"gcr\.io/dataflow-templates-base/python311-template-launcher-base"
                        r"(:flex_templates_base_image_release_\d{8}_RC\d\d|@sha256:[0-9a-f]{64})", base), base
    assert "latest" not in base


def test_launcher_image_starts_the_launcher_on_the_template_file():
    launcher = _dockerfile("launcher")
    assert "FROM ${LAUNCHER_BASE} AS template_launcher" in launcher
    assert ("COPY --from=template_launcher /opt/google/dataflow/python_template_launcher "
            "/opt/google/dataflow/python_template_launcher") in launcher
    assert 'ENTRYPOINT ["/opt/google/dataflow/python_template_launcher"]' in launcher
    assert "COPY deploy/dataflow/launcher.py /template/launcher.py" in launcher
    assert "ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/template/launcher.py" in launcher
    assert 'ENTRYPOINT ["/opt/apache/beam/boot"]' in _dockerfile("worker")


def _help_flags(run, capsys) -> set[str]:
    with pytest.raises(SystemExit):
        run(["--help"])
    return {word.split("=")[0].rstrip(",") for word in capsys.readouterr().out.split() if word.startswith("--")}


def test_metadata_parameters_are_flags_of_the_jobs(capsys):
    with open(METADATA) as f:
        metadata = json.load(f)
    params = {p["name"]: p for p in metadata["parameters"]}
    assert all(p["label"] and p["helpText"] for p in params.values())
    job_regex = params["command"]["regexes"][0]
    offered = [name for name in (*JOBS, "curate", "train", "gc") if re.fullmatch(job_regex, name)]
    assert sorted(offered) == sorted(_launcher().launchable())  # every job the launcher runs, no curate
    named = params["command"]["helpText"].split(": ", 1)[1].split(" (", 1)[0]  # "score random, ... or select"
    assert sorted(re.split(r", | or ", named)) == sorted(offered)
    format_regex = params["format"]["regexes"][0]
    assert all(re.fullmatch(format_regex, f) for f in documents.FORMATS)
    known = set().union(*(_help_flags(run, capsys) for run, _ in JOBS.values()))
    beam_options = set(PipelineOptions([]).get_all_options())
    for name in params:
        if name != "command":
            assert f"--{name}" in known or name in beam_options, name


# ------------------------------------------------------------------------------------ resources


@pytest.mark.parametrize("spec, expected", [
    (GPU, GPU),
    ("  count:1 ; TYPE:NVIDIA-L4;install-nvidia-driver;", GPU),
    ("type:nvidia-tesla-t4;count:02;install-nvidia-driver;use_nvidia_mps",
     "type:nvidia-tesla-t4;count:2;install-nvidia-driver;use_nvidia_mps"),
    ("type:nvidia-h100-80gb;count:8;install-nvidia-driver:latest",
     "type:nvidia-h100-80gb;count:8;install-nvidia-driver:latest"),
    ("type:tpu-v5-lite-podslice;topology:2X2", "type:tpu-v5-lite-podslice;topology:2x2"),
])
def test_parse_accelerator_normalises(spec, expected):
    assert resources.parse_accelerator(spec) == expected


@pytest.mark.parametrize("spec, message", [
    ("", "empty"),
    ("count:1;install-nvidia-driver", "no type"),
    ("type:l4;count:1;install-nvidia-driver", "neither an nvidia"),
    ("type:nvidia-l4;install-nvidia-driver", "needs count"),
    ("type:nvidia-l4;count:0;install-nvidia-driver", "positive integer"),
    ("type:nvidia-l4;count:one;install-nvidia-driver", "positive integer"),
    ("type:nvidia-l4;count:1", "install-nvidia-driver"),
    ("type:nvidia-l4;count:1;count:2;install-nvidia-driver", "twice"),
    ("type:nvidia-l4;count:1;install-nvidia-driver;gpus:2", "unknown option 'gpus'"),
    ("type:nvidia-l4;count:1;install-nvidia-driver;use_nvidia_mps:yes", "takes no value"),
    ("type:nvidia-l4;count:;install-nvidia-driver", "needs a value"),
    ("type:nvidia-l4;count:1;install-nvidia-driver;topology:2x2", "TPUs only"),
    ("type:tpu-v5-lite-podslice", "topology"),
    ("type:tpu-v5-lite-podslice;topology:big", "2x2"),
    ("type:tpu-v5-lite-podslice;topology:1x1;install-nvidia-driver", "GPUs only"),
    ("type=nvidia-l4,count=1", "unknown option"),
])
def test_parse_accelerator_rejects_with_a_reason(spec, message):
    with pytest.raises(ValueError, match=message) as err:
        resources.parse_accelerator(spec)
    assert resources.EXAMPLE in str(err.value)


def test_model_step_hints_are_what_beam_accepts():
    assert resources.model_step_hints(None) == {}
    hints = resources.model_step_hints("type:nvidia-l4; count:1; install-nvidia-driver", min_ram="16GiB")
    assert hints == {"accelerator": GPU, "min_ram": "16GiB"}
    step = beam.Map(str).with_resource_hints(**hints)
    assert step.get_resource_hints() == {ACCELERATOR_URN: GPU.encode("ascii"),
                                         common_urns.resource_hints.MIN_RAM_BYTES.urn: str(16 * 2**30).encode()}
    assert resources.model_step_hints(None, min_ram="2GB") == {"min_ram": "2GB"}
    with pytest.raises(ValueError, match="min_ram"):
        resources.model_step_hints(None, min_ram="lots")
