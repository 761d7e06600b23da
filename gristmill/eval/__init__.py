"""Evaluation: held-out perplexity, the paper's over-scaling and speed-up, selection quality, calibration, the report.

- `metrics`: pure functions over result tables and score arrays (over-scaling, speed-up,
  Kendall tau-b, histograms), with the paper's definitions (docs/paper.md §5.4, §6.2, §6.3).
- `scores`: scored records as aligned columns, one per `score/...` feature present.
- `quality`: `gristmill evaluate`, each scorer against labelled documents: ROC-AUC with a
  bootstrap interval, and the precision of top-k and of its paper rule at 10/20/40%.
- `calibration`: what a score means: the score at each percentile, the documents at chosen
  percentiles, their percentiles under every scorer, the scorers' Kendall agreement.
- `perplexity`: span-corruption perplexity of a trained T5 on a held-out text set
  (`c4_heldout`, `high_quality`).
- `grid`: the experiment's grid, pure: the config parsed and checked, samplers x rates x model
  sizes x steps x seeds, each run's name; `gristmill experiment` (`gristmill/experiment.py`) runs it.
- `results`: the experiment directory's files and its `results.jsonl` rows, means over seeds and
  the comparison with full data, as the runner writes them and the report reads them.
- `report`: `gristmill report`, one self-contained HTML page (a Jinja2 template) of score
  histograms, the Kendall tau matrix (Figure 7), calibration, extreme documents, selection
  quality, learning curves and the results table.
"""
