"""Evaluation: held-out perplexity, the paper's over-scaling and speed-up, the experiment grid, the report.

- `metrics`: pure functions over result tables and score arrays (over-scaling, speed-up,
  Kendall tau-b, histograms), with the paper's definitions (PAPER.md §5.4, §6.2, §6.3).
- `perplexity`: span-corruption perplexity of a trained T5 on a held-out text set
  (`c4_heldout`, `high_quality`).
- `experiment`: `gristmill experiment`, a grid of samplers x rates x model sizes x steps over a
  scored corpus: plan, train, evaluate learning curves, write `results.jsonl`.
- `report`: `gristmill report`, one self-contained HTML page of score histograms, the Kendall
  tau matrix (Figure 7), extreme documents, learning curves and the results table.
"""
