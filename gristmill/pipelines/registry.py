"""The scorers `gristmill score` knows: one line each, name -> (pipeline module, one-line help).

A new scorer is a pure scoring module (`gristmill/scoring/`), a short pipeline module with a
`run(argv=None, save_main_session=True, test_pipeline=None)` built on `gristmill.pipelines.kit`,
and one line here.
"""

SCORERS: dict[str, tuple[str, str]] = {
    "random": ("gristmill.pipelines.score_random", "score documents with the Random baseline"),
    "askllm": ("gristmill.pipelines.score_askllm", "score documents with Ask-LLM (P(yes))"),
    "density": ("gristmill.pipelines.score_density", "score documents with the LSH density sketch"),
    "clusters": ("gristmill.pipelines.score_clusters", "k-means clusters: SemDeDup and SSL Prototypes scores"),
    "perplexity": ("gristmill.pipelines.score_perplexity", "score documents with a proxy LM's perplexity"),
    "askllm-head": ("gristmill.pipelines.score_askllm_head",
                    "distilled Ask-LLM: a head on cached embeddings fitted to the LLM on a sample"),
}
