"""The scorers gristmill knows, each declared once: name, job module, help, features, paper rule, demo flags.

Everything else that lists scorers is derived from `SCORERS`: the `gristmill score <name>`
commands (`gristmill.cli.COMMANDS`), curate's jobs (`gristmill.curate.JOBS`), the evaluation's
rules (`gristmill.eval.quality.PAPER_RULES`), the demo's chain (`gristmill.demo.EXTRA_SCORERS`)
and the runner tests (every job translated by Dataflow, with its demo flags).

A new scorer is a pure scoring module (`gristmill/scoring/`), a short pipeline module with a
`run(argv=None, save_main_session=True, test_pipeline=None)` built on `gristmill.pipelines.kit`,
and one `ScorerInfo` here. Standard library only: the CLI imports this module to print its
usage, before Beam, TensorFlow or JAX.
"""

from __future__ import annotations

import dataclasses

# The selection rules of `gristmill.sampling.RULES` (literals here, so that this module imports nothing).
TOPK, BOTTOMK, IPS, RANDOM = "topk", "bottomk", "ips", "random"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScorerInfo:
    """One scorer, as the command line, curate, the evaluation and the demo know it.

    features: what the job adds to each record, `<...>` standing for a flag's value (`records.py`
    names every feature); the `score/<s>/...` ones are its scores. rule: the paper's selection rule
    for those scores (`gristmill evaluate` reports precision under it; `select --rule`). demo_flags:
    the flags sized for the demo's chain, besides --input, --output and --overwrite (the demo adds
    --seed, --model and --max_length from its own flags where it has them); also what the Dataflow
    translation test builds each job with.
    """

    name: str
    module: str
    help: str
    features: tuple[str, ...]
    rule: str
    demo_flags: tuple[str, ...] = ()

    @property
    def job(self) -> str:
        """The command words after `gristmill`, e.g. `score askllm`."""
        return f"score {self.name}"

    @property
    def scores(self) -> tuple[str, ...]:
        """The score names its features carry: `score/<s>/...` -> s (the name `rule` applies to)."""
        return tuple(dict.fromkeys(f.split("/")[1] for f in self.features if f.startswith("score/")))


# In the order the demo chains them: random, density and askllm have their own demo stages; the
# others follow in this order, each reading the records of the one before (askllm-head reuses the
# embeddings clusters caches beside its units).
_ALL = (
    ScorerInfo(name="random", module="gristmill.pipelines.score_random",
               help="score documents with the Random baseline",
               features=("score/random/seed-<seed>",), rule=RANDOM),
    ScorerInfo(name="askllm", module="gristmill.pipelines.score_askllm",
               help="score documents with Ask-LLM (P(yes))",
               features=("score/askllm/<model>", "logp/askllm/<model>/yes", "logp/askllm/<model>/no",
                         "truncated/askllm"),
               rule=TOPK, demo_flags=("--batch_size=8",)),
    ScorerInfo(name="density", module="gristmill.pipelines.score_density",
               help="score documents with the LSH density sketch",
               features=("score/density/<embedder>",), rule=IPS),
    ScorerInfo(name="clusters", module="gristmill.pipelines.score_clusters",
               help="k-means clusters: SemDeDup and SSL Prototypes scores",
               features=("cluster/<name>", "dist/<name>", "score/prototypes/<embedder>", "score/semdedup/<embedder>",
                         "keep/semdedup/<embedder>"),
               rule=TOPK, demo_flags=("--k=4",)),
    ScorerInfo(name="askllm-head", module="gristmill.pipelines.score_askllm_head",
               help="distilled Ask-LLM: a head on cached embeddings fitted to the LLM on a sample",
               # the sample's documents also keep what the LLM said (askllm's features)
               features=("score/askllm-head/<model>", "score/askllm/<model>", "logp/askllm/<model>/yes",
                         "logp/askllm/<model>/no", "truncated/askllm"),
               rule=TOPK, demo_flags=("--sample=40", "--max_length=512", "--batch_size=8")),
    ScorerInfo(name="perplexity", module="gristmill.pipelines.score_perplexity",
               help="score documents with a proxy LM's perplexity",
               features=("score/perplexity/<model>", "tokens/<model>", "truncated/perplexity"),
               rule=BOTTOMK, demo_flags=("--max_length=64", "--batch_size=16")),
)

SCORERS: dict[str, ScorerInfo] = {info.name: info for info in _ALL}


def paper_rules() -> dict[str, str]:
    """Score name (the `<s>` of `score/<s>/...`) -> the paper's selection rule for it, over every scorer."""
    rules: dict[str, str] = {}
    for info in SCORERS.values():
        for score in info.scores:
            if rules.setdefault(score, info.rule) != info.rule:
                raise ValueError(f"score {score!r} has two rules: {rules[score]!r} and {info.rule!r} ({info.name})")
    return rules
