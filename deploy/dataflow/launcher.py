"""Dataflow flex template entry point: the template's parameters -> one `gristmill` command.

Dataflow's template launcher runs this file (FLEX_TEMPLATE_PYTHON_PY_FILE) with every template
parameter as a `--name=value` flag and no positional words, so the command travels as a parameter:

    --command="score askllm" --input=gs://b/c4/*.json.gz --output=gs://b/scores/askllm ...
        -> gristmill score askllm --input=gs://b/c4/*.json.gz --output=gs://b/scores/askllm ... --runner=DataflowRunner

Without `--runner` gristmill would run the job in-process on the launcher VM, so DataflowRunner is
the default here. Every other flag passes through: the job's own flags and Beam's (project,
region, temp_location, sdk_container_image, ...), the launcher's `--template_location` included:
the job is staged there, this process exits, and Dataflow starts it (`kit.staged_only`).

`curate` is refused: it waits for each job of its chain before starting the next, and a template
launch stages one job and exits. It runs as a Cloud Run job or an Airflow task (docs/deploy.md).
"""

from __future__ import annotations

import sys

from gristmill import cli

COMMAND = "--command"
NOT_LAUNCHABLE = {
    "curate": "curate runs a chain of jobs and waits for each, but a template launch stages one job and "
              "exits; run `gristmill curate --runner=DataflowRunner ...` as a Cloud Run job or an Airflow "
              "task instead (docs/deploy.md, \"curate on a schedule\"), or launch each step's job here",
}


def launchable() -> list[str]:
    """The commands a template may run: the Beam jobs (one pipeline each, staged and left to Dataflow)."""
    return [" ".join(w) for w, (module, _, _) in cli.COMMANDS.items() if module.startswith("gristmill.pipelines.")]


def command_line(args: list[str]) -> list[str]:
    """The gristmill argv for the template's flags: the command's words first, DataflowRunner by default."""
    rest, command = [], None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith(COMMAND + "="):
            command = arg.split("=", 1)[1]
        elif arg == COMMAND and i + 1 < len(args):
            command, i = args[i + 1], i + 1
        else:
            rest.append(arg)
        i += 1
    choices = launchable()
    if command is None:
        raise SystemExit(f"launcher: {COMMAND} is required, one of: {', '.join(choices)}")
    command = " ".join(command.split())
    if command in NOT_LAUNCHABLE:
        raise SystemExit(f"launcher: {COMMAND}={command!r} is not offered as a template: {NOT_LAUNCHABLE[command]}")
    if command not in choices:
        raise SystemExit(f"launcher: {COMMAND}={command!r} cannot run on Dataflow; one of: {', '.join(choices)}")
    if not any(a == "--runner" or a.startswith("--runner=") for a in rest):
        rest.append("--runner=DataflowRunner")
    return [*command.split(), *rest]


def main(argv: list[str] | None = None) -> int:
    """Runs the command the template's flags describe; returns its exit code."""
    return cli.main(command_line(list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
