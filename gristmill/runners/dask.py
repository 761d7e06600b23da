"""Beam's DaskRunner, made safe for gristmill: `--runner dask`.

Beam's DaskRunner (apache-beam 2.77) runs a ParDo's bundle (a Dask partition) through
`transform_evaluator.apply_dofn_to_bundle`, which collects the bundle's outputs *before*
`finish_bundle`, so whatever a DoFn emits there is lost (BatchElements' and RunInference's last
batch of every bundle). The receiver list, output handler and side-input maps it uses are built
once per ParDo and shared by every bundle that sees the same objects, so one bundle's outputs
can come out again with the next one's. And each bundle that reads a side input computes it
again, with all its upstream work, from inside its task. `PerBundleParDo` builds the receivers,
the output handler, the side-input maps and the DoFn itself afresh for every bundle, collects the
outputs after `finish_bundle`, and makes each side input an ordinary dependency of the bundles'
tasks, computed once. `docs/engines.md` has the upstream bug report.

`DaskRunner` (named by `--runner dask`) installs that fix before it translates a pipeline, refuses
a Beam release it was not written for, refuses multi-output ParDos (Beam's translation merges
their outputs), makes every worker import gristmill before its first task, and closes its client
when the job ends. Its default `--dask_partition_size=1` (see `runner_args`) makes each input
file its own partition: Beam's Reshuffle is a no-op on Dask, so partitions are the only spreading.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import apache_beam
from apache_beam.internal import pickler
from apache_beam.runners.common import DoFnContext, DoFnInvoker, DoFnSignature, _OutputHandler
from apache_beam.runners.dask import dask_runner, transform_evaluator
from apache_beam.runners.runner import PipelineState
from apache_beam.transforms.core import DoFn
from apache_beam.transforms.sideinputs import SideInputMap
from distributed import WorkerPlugin

from gristmill import errors

# Beam releases whose DaskRunner has the bug and whose transform_evaluator this fix was written
# against. tests/test_dask.py fails the day the installed release no longer loses outputs.
PATCHED_BEAM_VERSIONS = ("2.77.0",)
RUNNER = "gristmill.runners.dask.DaskRunner"
PARTITION_FLAGS = ("--dask_partition_size", "--dask_npartitions")
log = logging.getLogger(__name__)


class DaskRunnerError(errors.UsageError):
    """The Dask engine cannot run this job as asked (Beam release, pipeline shape)."""


def check_beam_version(version: Optional[str] = None) -> None:
    """Raises DaskRunnerError unless the fix was written for this Beam release."""
    version = version or apache_beam.__version__
    if version not in PATCHED_BEAM_VERSIONS:
        raise DaskRunnerError(
            f"--runner dask: gristmill's fix for Beam's DaskRunner was written for apache-beam "
            f"{', '.join(PATCHED_BEAM_VERSIONS)}, and {version} is installed. Run tests/test_dask.py on it: if "
            f"test_beam_dask_runner_still_needs_the_fix fails, Beam fixed the bug and the patch can go; "
            f"otherwise add {version} to gristmill.runners.dask.PATCHED_BEAM_VERSIONS")


def runner_args(args: list[str]) -> list[str]:
    """Beam flags with `--runner <a Dask name>` replaced by this runner and `--dask_partition_size=1`
    added unless a partition flag is given.

    Example: ["--runner", "dask", "--dask_client_address=tcp://h:8786"] ->
    ["--dask_client_address=tcp://h:8786", "--runner=gristmill.runners.dask.DaskRunner",
    "--dask_partition_size=1"].
    """
    check_beam_version()
    out: list[str] = []
    skip = False
    for i, arg in enumerate(args):
        if skip:
            skip = False
            continue
        if arg == "--runner" and i + 1 < len(args):
            skip = True
            continue
        if arg.startswith("--runner="):
            continue
        out.append(arg)
    names = {a.split("=", 1)[0] for a in out if a.startswith("--")}
    out.append(f"--runner={RUNNER}")
    if not names & set(PARTITION_FLAGS):
        out.append("--dask_partition_size=1")
    return out


# ------------------------------------------------------------------------------------ the fix


class PerBundleParDo(transform_evaluator.ParDo):
    """Beam's ParDo translation with everything mutable made per bundle (see the module docstring)."""

    def apply(self, input_bag, side_inputs=None):
        transform = self.transform
        args, kwargs = transform.raw_side_inputs
        main_input = next(iter(self.applied.main_inputs.values()))
        window_fn = main_input.windowing.windowfn if hasattr(main_input, "windowing") else None
        # A side input's bag, nested in `views`, is a dependency of every bundle's task: Dask computes
        # it once and passes its elements. (Beam's translation hides the bag in its SideInputMap,
        # so each bundle that reads it computes it again, upstream work and all, from inside a task.)
        views = [(s._view_class, s._view_options, s._iterable.window_fn, s._iterable.bag) for s in side_inputs or ()]
        return input_bag.map(transform_evaluator.get_windowed_value, window_fn).map_partitions(
            run_bundle, pickler.dumps(transform.fn), transform.label, window_fn, views, list(args), kwargs)


def run_bundle(items, serialized_fn: bytes, label: str, window_fn, views, args, kwargs) -> list[Any]:
    """Runs one bundle through a fresh copy of the DoFn; returns its outputs, finish_bundle's included."""
    receivers = transform_evaluator.OneReceiver()
    handler = _OutputHandler(window_fn=window_fn, main_receivers=receivers[None], tagged_receivers=receivers,
                             per_element_output_counter=None, output_batch_converter=None,
                             process_yields_batches=False, process_batch_yields_elements=False)
    invoker = DoFnInvoker.create_invoker(
        DoFnSignature(pickler.loads(serialized_fn)), handler,
        context=DoFnContext(label, state=None),
        side_inputs=[SideInputMap(view_class, options, [transform_evaluator.get_windowed_value(v, fn) for v in values])
                     for view_class, options, fn, values in views] or None,
        input_args=args, input_kwargs=kwargs, user_state_context=None,
        bundle_finalizer_param=DoFn.BundleFinalizerParam())
    invoker.invoke_setup()
    invoker.invoke_start_bundle()
    for item in items:
        invoker.invoke_process(item)
    invoker.invoke_finish_bundle()
    invoker.invoke_teardown()
    return [v.value for v in receivers.values]


def apply_patch() -> None:
    """Makes Beam's Dask translation use PerBundleParDo (idempotent; checks the Beam release)."""
    check_beam_version()
    if transform_evaluator.TRANSLATIONS[apache_beam.ParDo] is not PerBundleParDo:
        transform_evaluator.TRANSLATIONS[apache_beam.ParDo] = PerBundleParDo
        log.debug("Beam's DaskRunner ParDo translation replaced by gristmill's per-bundle one")


# ------------------------------------------------------------------------------------ the runner


def check_single_outputs(pipeline) -> None:
    """Refuses a ParDo with tagged outputs: Beam's Dask translation hands all of them to every consumer."""

    class Visitor(apache_beam.pipeline.PipelineVisitor):
        def visit_transform(self, node):
            if isinstance(node.transform, apache_beam.ParDo) and len(node.outputs) > 1:
                raise DaskRunnerError(f"--runner dask: {node.full_label} has tagged outputs "
                                      f"({', '.join(map(str, node.outputs))}), which Beam's DaskRunner merges")

    pipeline.visit(Visitor())


def dask_setup(worker=None) -> None:
    """Prepares a Dask worker for gristmill's tasks (also `dask worker --preload gristmill.runners.dask`):
    imports the job kit and sends gristmill's progress lines (`unit <key>: 20 written ...`) to the
    worker's log, with the worker's pid."""
    import gristmill.pipelines.kit  # noqa: F401  (Beam, records, TensorFlow's protos: the costly imports)

    logger = logging.getLogger("gristmill")
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s pid %(process)d: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


class PreloadPlugin(WorkerPlugin):
    """A Dask worker plugin that runs dask_setup on every worker, those that join later included."""

    name = "gristmill-preload"
    idempotent = True  # registered by every job; set up once per worker

    def setup(self, worker):
        dask_setup(worker)


class DaskRunner(dask_runner.DaskRunner):
    """Beam's DaskRunner with gristmill's per-bundle fix, a gristmill preload on the workers and a
    client closed at the end of the job."""

    def run_pipeline(self, pipeline, options):
        import dask
        import dask.distributed as ddist

        apply_patch()
        check_single_outputs(pipeline)
        dask_options = options.view_as(dask_runner.DaskOptions).get_all_options(drop_default=True,
                                                                                 current_only=True)
        bag_kwargs = dask_runner.DaskOptions._extract_bag_kwargs(dask_options)
        client = ddist.Client(**dask_options)
        try:
            client.register_plugin(PreloadPlugin())
            pipeline.replace_all(dask_runner.dask_overrides())
            visitor = self.to_dask_bag_visitor(bag_kwargs)
            pipeline.visit(visitor)
            graph = dask.optimize(list(visitor.bags.values())[-1])
            futures = client.compute(graph)
        except BaseException:
            client.close()
            raise
        return DaskRunnerResult(client, futures)


class DaskRunnerResult(dask_runner.DaskRunnerResult):
    """Beam's result, closing the client once the job has finished or failed."""

    def wait_until_finish(self, duration=None) -> str:
        try:
            return super().wait_until_finish(duration)
        finally:
            if self._state != PipelineState.RUNNING:
                self.client.close()
