"""Markdown tables for BENCHMARKS.md from the JSON results of the side-by-side benchmarks.

    python benchmarks/tables.py bench-results/          # prints the tables of every *.json there

`make bench` (benchmarks/run_all.py) writes the JSON files and runs this on them; paste its
output into BENCHMARKS.md so the tables there always come from one recorded run.
"""

from __future__ import annotations

import glob
import json
import os
import sys


def _times(times: list[float]) -> str:
    return " / ".join(f"{t:.1f}" for t in times)


def askllm_table(r: dict) -> str:
    """The Ask-LLM CPU table (one row per dtype) and its notes."""
    pad = r["padding"]
    lines = [f"{r['docs']} C4 prompts (mean {r['mean_prompt_tokens']:.0f} tokens), {r['model']}, batch "
             f"{r['batch_size']}, max_length {r['max_length']}, best of {r['rounds']} interleaved rounds "
             f"(round times in s: gristmill / peer).",
             "",
             "| dtype | gristmill tokens/s | peer | peer tokens/s | ratio | rounds, s | max abs dlogP(yes) vs peer |",
             "|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['dtype']} | {row['gristmill_tokens_per_s']:.0f} | {row['peer']} | "
                     f"{row['peer_tokens_per_s']:.0f} | **{row['ratio']:.2f}x** | {_times(row['gristmill_times'])}"
                     f" ; {_times(row['peer_times'])} | {row['max_abs_logp_yes_diff_vs_peer']:.1e} |")
    for row in r["rows"]:
        if "accuracy_vs_float32" in row:
            acc = row["accuracy_vs_float32"]
            lines.append("")
            lines.append(f"{row['dtype']} accuracy cost against gristmill float32 on the same prompts: max "
                         f"abs dlog P(yes) {acc['max_abs_logp_yes_diff']:.3f}, max abs dP(yes) "
                         f"{acc['max_abs_p_yes_diff']:.4f}, Spearman of P(yes) {acc['spearman_p_yes']:.4f}.")
    lines.append("")
    lines.append(f"Padding: gristmill buckets {pad['gristmill_buckets']} compute {pad['gristmill_padded_tokens']} "
                 f"tokens, the peer (padded to the longest prompt of each batch) {pad['peer_padded_tokens']}, "
                 f"for {r['real_tokens']} real tokens.")
    return "\n".join(lines)


def embedding_table(r: dict) -> str:
    """The embedding CPU table (one row per dtype)."""
    lines = [f"{r['docs']} C4 documents, {r['model']}, batch {r['batch_size']}, texts in and unit vectors out, "
             f"best of {r['rounds']} interleaved rounds (round times in s: gristmill / peer).",
             "",
             "| dtype | gristmill docs/s | peer | peer docs/s | ratio | rounds, s | min cosine vs peer |",
             "|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['dtype']} | {row['gristmill_docs_per_s']:.1f} | {row['peer']} | "
                     f"{row['peer_docs_per_s']:.1f} | **{row['ratio']:.2f}x** | {_times(row['gristmill_times'])}"
                     f" ; {_times(row['peer_times'])} | {row['min_cosine_vs_peer']:.6f} |")
    for row in r["rows"]:
        if "min_cosine_vs_float32" in row:
            lines.append("")
            lines.append(f"{row['dtype']} accuracy cost: min cosine to gristmill's float32 embeddings "
                         f"{row['min_cosine_vs_float32']:.5f}.")
    return "\n".join(lines)


TABLES = {"askllm_cpu": askllm_table, "embedding_throughput": embedding_table}


def _unit(r: dict) -> tuple[str, str]:
    return ("tokens/s", "tokens_per_s") if r["benchmark"] == "askllm_cpu" else ("docs/s", "docs_per_s")


def cross_rows(r: dict) -> list[dict]:
    """gristmill in a reduced precision against the peer in float32 (the peer's default), from the
    same run's rows: the comparison the issue's CPU target allows with a stated accuracy cost."""
    _, key = _unit(r)
    float32 = next((row for row in r["rows"] if row["dtype"] == "float32"), None)
    if float32 is None:
        return []
    return [{"dtype": row["dtype"], "gristmill": row["gristmill_" + key], "peer": float32["peer_" + key],
             "peer_name": float32["peer"], "ratio": row["gristmill_" + key] / float32["peer_" + key]}
            for row in r["rows"] if row["dtype"] != "float32"]


def cross_table(r: dict) -> str:
    """The cross-precision rows as a markdown table (empty without a float32 row)."""
    unit, _ = _unit(r)
    rows = cross_rows(r)
    if not rows:
        return ""
    lines = [f"| gristmill dtype | gristmill {unit} | peer (float32) | peer {unit} | ratio |", "|---|---|---|---|---|"]
    lines += [f"| {c['dtype']} | {c['gristmill']:.1f} | {c['peer_name']} | {c['peer']:.1f} | **{c['ratio']:.2f}x** |"
              for c in rows]
    return "\n".join(lines)


def summary_lines(r: dict) -> list[str]:
    """One line per row: what, ratio, peer with its version (what `make bench` prints at the end)."""
    unit, key = _unit(r)
    lines = [f"{r['benchmark']} {row['dtype']}: {row['ratio']:.2f}x ({row['gristmill_' + key]:.1f} vs "
             f"{row['peer_' + key]:.1f} {unit}; peer {row['peer']})" for row in r["rows"]]
    lines += [f"{r['benchmark']} gristmill {c['dtype']} vs peer float32: {c['ratio']:.2f}x ({c['gristmill']:.1f} vs "
              f"{c['peer']:.1f} {unit})" for c in cross_rows(r)]
    return lines


def render(results_dir: str) -> str:
    """Every known table in `results_dir`, with a heading per benchmark."""
    parts = []
    for path in sorted(glob.glob(os.path.join(results_dir, "*.json"))):
        with open(path) as f:
            r = json.load(f)
        if r.get("benchmark") in TABLES:
            cross = cross_table(r)
            parts.append(f"### {r['benchmark']}\n\n" + TABLES[r["benchmark"]](r) + (f"\n\n{cross}" if cross else ""))
    return "\n\n".join(parts)


if __name__ == "__main__":
    print(render(sys.argv[1] if len(sys.argv) > 1 else "bench-results"))
