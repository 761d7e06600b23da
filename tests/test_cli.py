"""The command line: one flag parser for every command (typos and stray arguments refused, Beam's
options passed through), curate's config checks, and how errors are reported."""

import dataclasses
import importlib
import json
import time
from typing import Optional

import pytest

from gristmill import cli, curate, errors, flags
from gristmill.pipelines import kit
from gristmill.pipelines.registry import SCORERS
from gristmill.scoring.random_score import RandomScoreConfig

JOB = ["--input=in/*.jsonl", "--output=out"]

# command -> (argv with one misspelled flag, the flag it should suggest)
MISSPELLED = {
    **{("score", name): ([*JOB, "--limt=3"], "--limit") for name in SCORERS},
    ("score", "random"): ([*JOB, "--sed", "3"], "--seed"),
    ("select",): ([*JOB, "--scroe=score/random/seed-0"], "--score"),
    ("curate",): (["--config=c.json", "--runid=x"], "--run_id"),
    ("export",): ([*JOB, "--fromat=parquet"], "--format"),
    ("train",): (["--data=a", "--output=o", "--steps=1", "--bach_size=8"], "--batch_size"),
    ("experiment",): (["--gird=g.json"], "--grid"),
    ("report",): (["--experimnet=e"], "--experiment"),
    ("evaluate",): (["--scored=s", "--output=o", "--bootstap=5"], "--bootstrap"),
    ("tokenizer", "train"): (["--input=a", "--output=o", "--vocab_sise=9"], "--vocab_size"),
    ("demo",): (["--documnets=5"], "--documents"),
}


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


@pytest.mark.parametrize("words", [w for w in cli.COMMANDS if w != ("gc",)], ids=" ".join)
def test_a_misspelled_flag_fails_with_a_suggestion(words, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv, suggestion = MISSPELLED[words]
    assert cli.main([*words, *argv]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "unknown flag --" in line and f"did you mean {suggestion}?" in line, line
    assert not list(tmp_path.iterdir())  # nothing ran


@pytest.mark.parametrize("words, argv, flag", [
    (("score", "random"), ["--input", "a.json.gz", "b.json.gz", "--output", "o"], "--input"),
    (("tokenizer", "train"), ["--input", "a.json.gz", "b.json.gz", "--output", "o"], "--input"),
    (("train",), ["--data", "a.tfrecord", "b.tfrecord", "--output", "o", "--steps=1"], "--data"),
])
def test_an_unquoted_glob_is_refused_with_a_hint(words, argv, flag, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main([*words, *argv]) == 2
    stray = argv[2]
    assert _one_line(capsys.readouterr().err).endswith(
        f"error: unexpected argument {stray!r}: quote the {flag} pattern so the shell does not expand it")


def test_beams_own_options_pass_through_and_are_checked():
    beam = ["--runner", "DataflowRunner", "--project=p", "--region=europe-west4", "--temp_location", "gs://b/tmp",
            "--direct_num_workers=3", "--job_endpoint=embed", "--environment_type=LOOPBACK", "--dry_run=true",
            "--experiments=a", "--experiments", "b", "--save_main_session"]
    options, config, pipeline_options = kit.parse([*JOB, "--seed=4", *beam], RandomScoreConfig, "")
    assert config.seed == 4 and options.output.endswith("out")
    got = pipeline_options.get_all_options()
    assert {k: got[k] for k in ("runner", "project", "region", "temp_location", "direct_num_workers", "job_endpoint",
                                "environment_type", "dry_run", "experiments", "save_main_session")} == {
        "runner": "DataflowRunner", "project": "p", "region": "europe-west4", "temp_location": "gs://b/tmp",
        "direct_num_workers": 3, "job_endpoint": "embed", "environment_type": "LOOPBACK", "dry_run": "true",
        "experiments": ["a", "b"], "save_main_session": True}
    with pytest.raises(flags.FlagError, match="unknown flag --runer; did you mean --runner"):
        kit.parse([*JOB, "--runer=DataflowRunner"], RandomScoreConfig, "")
    with pytest.raises(flags.FlagError, match="--direct_num_workers: invalid int value"):
        kit.parse([*JOB, "--direct_num_workers=two"], RandomScoreConfig, "")


def test_a_beam_option_reaches_a_real_run(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"document {i}"}) + "\n" for i in range(5)))
    out = tmp_path / "out"
    assert cli.main(["score", "random", "--input", str(corpus), "--output", str(out), "--seed=2",
                     "--direct_num_workers=1"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["written"] == 5


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Inner:
    label_field: str = "label"


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Outer:
    scored: str
    inner: _Inner = _Inner()
    seeds: tuple[int, ...] = (0, 1)
    resamples: int = dataclasses.field(default=10, metadata={"flag": "bootstrap"})
    hidden: Optional[str] = dataclasses.field(default=None, metadata={"flag": False})


def test_flags_of_nested_renamed_typed_and_required_fields():
    parsed = flags.parse_config(_Outer, ["--scored=s", "--label_field=grade", "--seeds=3,4", "--seeds", "5",
                                         "--bootstrap=7"], "t")
    assert parsed == _Outer(scored="s", inner=_Inner(label_field="grade"), seeds=(3, 4, 5), resamples=7)
    assert flags.parse_config(_Outer, flags.to_argv(parsed), "t") == parsed
    with pytest.raises(flags.FlagError, match="required: --scored"):
        flags.parse_config(_Outer, [], "t")
    with pytest.raises(flags.FlagError, match="unknown flag --hidden"):
        flags.parse_config(_Outer, ["--scored=s", "--hidden=x"], "t")
    with pytest.raises(flags.FlagError, match="comma-separated int values"):
        flags.parse_config(_Outer, ["--scored=s", "--seeds=1,x"], "t")


# --------------------------------------------------------------------------- the scorer registry

FEATURE_KINDS = {"score", "logp", "truncated", "tokens", "cluster", "dist", "keep"}  # records.py's families


@pytest.mark.parametrize("info", SCORERS.values(), ids=lambda info: info.name)
def test_each_registered_scorer_is_a_job_with_features_a_rule_and_demo_flags(info):
    from gristmill import sampling
    module = importlib.import_module(info.module)
    assert callable(module.run) and info.help and info.job == f"score {info.name}"
    assert info.scores and all(f.split("/")[0] in FEATURE_KINDS for f in info.features), info.features
    assert info.rule in sampling.RULES
    assert all(f.startswith("--") and "=" in f for f in info.demo_flags), info.demo_flags


def test_every_scorer_table_is_derived_from_the_registry():
    from gristmill import demo
    from gristmill.eval import quality
    from gristmill.pipelines import registry
    assert {words: module for words, (module, _, _) in cli.COMMANDS.items() if words[0] == "score"} == {
        ("score", info.name): info.module for info in SCORERS.values()}
    assert {job for job in curate.JOBS if job != curate.SELECT_JOB} == {info.job for info in SCORERS.values()}
    assert quality.PAPER_RULES == registry.paper_rules()
    assert {quality.paper_rule(f"score/{s}/m") for info in SCORERS.values() for s in info.scores} == {
        info.rule for info in SCORERS.values()}
    assert list(demo.EXTRA_SCORERS) == [name for name in SCORERS if name not in demo.OWN_STAGES]
    assert set(demo.OWN_STAGES) < set(SCORERS)
    assert demo.DemoConfig().extra_scorers == tuple(demo.EXTRA_SCORERS)


def test_the_registry_imports_nothing_heavy():
    import subprocess
    import sys
    probe = ("import sys, gristmill.pipelines.registry; "
             "print(sorted(m for m in ('apache_beam', 'numpy', 'tensorflow', 'jax') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_two_scorers_cannot_give_one_score_two_rules(monkeypatch):
    from gristmill.pipelines import registry
    clash = dataclasses.replace(SCORERS["askllm"], name="askllm-bottom", rule=registry.BOTTOMK)
    monkeypatch.setitem(registry.SCORERS, clash.name, clash)
    with pytest.raises(ValueError, match="'askllm' has two rules"):
        registry.paper_rules()


# --------------------------------------------------------------------------- curate


def _chain(tmp_path, **step_flags):
    return {"name": "t", "input": str(tmp_path / "corpus" / "*.jsonl"), "workdir": str(tmp_path / "work"),
            "steps": [{"name": "random", "job": "score random", "flags": {"seed": 3, **step_flags}},
                      {"name": "top", "job": "select", "input_from": "random",
                       "flags": {"score": "score/random/seed-3", "rule": "topk", "rate": 0.3}}]}


@pytest.mark.parametrize("key, message", [
    ("output=/x", "flag(s) output are set by curate"),
    ("overwrite=1", "flag(s) overwrite are set by curate"),
    ("--input", "flag(s) input are set by curate"),
    ("rate=0.2", "flag key 'rate=0.2' is not a flag name"),
    ("seed\n", "is not a flag name"),
])
def test_curate_refuses_flag_keys_that_bypass_its_checks(key, message, tmp_path):
    with pytest.raises(curate.CurationError) as err:
        curate.parse_config(_chain(tmp_path, **{key: True}))
    assert message in str(err.value)


def test_curate_refuses_names_with_a_trailing_newline(tmp_path):
    raw = _chain(tmp_path)
    raw["steps"][0]["name"] = "random\n"
    with pytest.raises(curate.CurationError, match="must be letters, digits"):
        curate.parse_config(raw)
    with pytest.raises(curate.CurationError, match="--run_id 'b\\\\n' must be letters"):
        curate.curate(curate.parse_config(_chain(tmp_path)), {}, run_id="b\n")
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("where", ["config", "command line"])
def test_a_misspelled_step_flag_fails_before_any_step_runs(where, tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps(_chain(tmp_path, **({"sed": 4} if where == "config" else {}))))
    argv = ["curate", "--config", str(config)] + (["--sed=4"] if where == "command line" else [])
    assert cli.main(argv) == 2
    line = _one_line(capsys.readouterr().err)
    assert "step 'random' (score random): unknown flag --sed; did you mean --seed?" in line, line
    assert not (tmp_path / "work").exists()


def _alias_bomb(levels: int = 9) -> str:
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for i in range(1, levels):
        prev, name = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{name}: &{name} [{','.join(['*' + prev] * 9)}]")
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_is_refused_quickly(tmp_path, capsys):
    bomb = _alias_bomb()
    assert len(bomb) < 600  # expands to 9**9 strings
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb)
    start = time.monotonic()
    assert cli.main(["curate", "--config", str(path)]) == 2
    assert time.monotonic() - start < 5
    assert "expand to more than" in _one_line(capsys.readouterr().err)
    anchors = tmp_path / "anchors.yaml"  # a few aliases are fine
    raw = _chain(tmp_path)
    anchors.write_text(f"name: t\ninput: {raw['input']}\nworkdir: {raw['workdir']}\n"
                       "flags: &shared {unit_records: 5}\nsteps:\n- {name: random, job: score random, flags: *shared}\n"
                       "- {name: top, job: select, input_from: random, flags: {score: s, rule: random, rate: 0.5}}\n")
    assert curate.load_config(str(anchors))[0].steps[0].flags == {"unit_records": 5}


def test_an_oversized_or_deeply_nested_config_is_refused(tmp_path):
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"name": "x" * (curate.MAX_CONFIG_BYTES + 1)}))
    with pytest.raises(curate.CurationError, match="a config has at most"):
        curate.load_config(str(big))
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(curate.CurationError, match="nested too deeply"):
        curate.load_config(str(deep))


# --------------------------------------------------------------------------- errors


def _failing_report(monkeypatch, err: Exception):
    def run(argv):
        raise err
    monkeypatch.setattr(importlib.import_module("gristmill.eval.report"), "run", run)


def test_a_user_error_is_one_line_and_verbose_shows_its_traceback(monkeypatch, capsys):
    monkeypatch.delenv("GRISTMILL_DEBUG", raising=False)
    assert cli.main(["report", "--bins=many"]) == 2
    assert _one_line(capsys.readouterr().err) == "gristmill report: error: argument --bins: invalid int value: 'many'"
    assert cli.main(["report", "--bins=many", "--verbose"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_an_environment_error_is_one_line_with_exit_code_1(monkeypatch, capsys):
    _failing_report(monkeypatch, OSError(28, "No space left on device"))
    assert cli.main(["report"]) == 1
    assert _one_line(capsys.readouterr().err) == "gristmill report: error: [Errno 28] No space left on device"


def test_an_internal_error_keeps_its_traceback(monkeypatch):
    _failing_report(monkeypatch, KeyError("a bug"))
    with pytest.raises(KeyError, match="a bug"):
        cli.main(["report"])
    _failing_report(monkeypatch, ValueError("also a bug"))  # not every ValueError is the user's
    with pytest.raises(ValueError, match="also a bug"):
        cli.main(["report"])


@pytest.mark.parametrize("name", sorted(errors.USER_ERROR_CLASSES))
def test_registered_user_errors_exist_and_exit_2(name):
    module, _, qualname = name.rpartition(".")
    cls = getattr(importlib.import_module(module), qualname)
    assert issubclass(cls, Exception) and errors.exit_code(cls("x")) == errors.USAGE_EXIT
