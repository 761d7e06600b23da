"""How well does the Ask-LLM score separate good from bad web text? ROC-AUC against human labels.

Data: `annot_round1/eng_Latn/batch0.tsv` of github.com/hplt-project/release2_inspection (the rows
of gristmill/data/labels/hplt-v2-eng.jsonl; `TSV` below says where it is read from), 200 English
HPLT v2 documents (each ~1,000 characters: 500 from the start of each half) labelled by a person.
A row is BAD when it is marked `unnatural?` (SEO word lists, boilerplate) or `porn?`, GOOD otherwise (170 / 30).
The AUC is P(score of a random good row > score of a random bad row), ties counting one half,
with a percentile bootstrap 95% interval; the AUC of log P(yes) - log P(no) (a yes/no
renormalisation, not the paper's score) is printed beside it for reference.

    python benchmarks/askllm_hplt_auc.py                                # SmolLM2-135M-Instruct, CPU
    python benchmarks/askllm_hplt_auc.py --model /models/flan-t5-xl --batch-size 64   # on a GPU
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TSV = os.path.join(REPO, "..", "shared", "data", "hplt-v2-annotations", "eng_Latn_batch0.tsv")


def read_labelled(path: str = TSV) -> tuple[list[str], np.ndarray]:
    """(texts, good) from the HPLT annotation TSV; good = neither `porn?` nor `unnatural?` is 1."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    header, rows = rows[0], rows[1:]
    porn, unnatural, text = (next(i for i, h in enumerate(header) if h.startswith(p))
                             for p in ("porn?", "unnatural?", "text_show"))
    good = np.array([r[porn].strip() != "1" and r[unnatural].strip() != "1" for r in rows])
    return [r[text] for r in rows], good


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Mann-Whitney ROC-AUC of `scores` for the boolean `positive`, ties counted one half."""
    scores = np.asarray(scores, np.float64)
    positive = np.asarray(positive, bool)
    pos, neg = scores[positive], scores[~positive]
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("ROC-AUC needs both classes")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def bootstrap_interval(scores, positive, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of roc_auc, resampling rows (both classes kept non-empty)."""
    rng = np.random.default_rng(seed)
    scores, positive = np.asarray(scores), np.asarray(positive, bool)
    stats = []
    while len(stats) < n:
        idx = rng.integers(0, len(scores), len(scores))
        if positive[idx].all() or not positive[idx].any():
            continue
        stats.append(roc_auc(scores[idx], positive[idx]))
    return float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="zoo name, .gguf or HF model dir")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--prompt-template", default=None)
    parser.add_argument("--tsv", default=TSV)
    parser.add_argument("--out", default=None, help="write per-row scores and the summary as JSON here")
    args = parser.parse_args(argv)

    sys.path.insert(0, REPO)
    from gristmill.scoring import askllm

    texts, good = read_labelled(args.tsv)
    config = askllm.AskLLMConfig(model=args.model, model_name=os.path.basename(args.model.rstrip("/")),
                                 prompt_template=args.prompt_template, max_length=args.max_length,
                                 batch_size=args.batch_size, dtype=args.dtype)
    t0 = time.perf_counter()
    scorer = askllm.AskLLMScorer(config)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    results = scorer.score_batch(texts)
    t_score = time.perf_counter() - t0

    score = np.array([r.score for r in results])
    margin = np.array([r.logp_yes - r.logp_no for r in results])
    auc = roc_auc(score, good)
    lo, hi = bootstrap_interval(score, good)
    summary = {
        "model": args.model, "rows": len(texts), "good": int(good.sum()), "bad": int((~good).sum()),
        "auc_p_yes": auc, "auc_p_yes_95ci": [lo, hi], "auc_logp_yes_minus_logp_no": roc_auc(margin, good),
        "mean_p_yes_good": float(score[good].mean()), "mean_p_yes_bad": float(score[~good].mean()),
        "truncated": int(sum(r.truncated for r in results)),
        "mean_tokens": float(np.mean([r.n_tokens for r in results])),
        "load_s": round(t_load, 2), "score_s": round(t_score, 2), "docs_per_s": round(len(texts) / t_score, 2),
        "max_length": args.max_length, "batch_size": args.batch_size, "dtype": args.dtype,
    }
    print(json.dumps(summary, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"summary": summary, "rows": [
                {"good": bool(g), "score": r.score, "logp_yes": r.logp_yes, "logp_no": r.logp_no}
                for g, r in zip(good, results)]}, f, indent=1)


if __name__ == "__main__":
    main()
