"""Beam per-record overhead: `gristmill score random` (the job kit) against a plain Beam pipeline.

    python benchmarks/beam_overhead.py [--documents 20000] [--file_documents 10000] [--profile]

Both do the same work on the same C4-shaped files, on the in-process FnApiRunner: read the
json.gz files, parse each line (json.loads), give it the BLAKE2b document id and random score of
`gristmill.scoring.random_score`, and write tf.train.Example TFRecords. The plain pipeline is
`ReadFromTextWithFilename | Map(parse + hash + serialise) | WriteToTFRecord`, which is what a user
would write without gristmill; the kit adds work units, markers, dead letters and the manifest.
The documents are the embedded 1,000-document C4 sample repeated, a counter in each text so
every id differs, in files of --file_documents documents.

Each run is its own subprocess, so its peak RSS (`ru_maxrss`) is its own. Printed: documents/s of
each, the kit / plain ratio from the same run, peak RSS of each, and the time of a no-op rerun of
the kit job (every unit already done: the resume overhead). --profile runs the kit job under
cProfile instead and prints where its time goes.
"""

from __future__ import annotations

import argparse
import cProfile
import glob
import gzip
import json
import os
import pstats
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLE = os.path.join(HERE, "..", "gristmill", "data", "c4-olmo", "*.json.gz")
LOCAL_RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"


def make_corpus(directory: str, documents: int, file_documents: int) -> str:
    """Writes `documents` C4-shaped documents into json.gz files; returns their glob."""
    sample = []
    for path in sorted(glob.glob(SAMPLE)):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            sample.extend(json.loads(line) for line in f)
    written = 0
    while written < documents:
        n = min(file_documents, documents - written)
        path = os.path.join(directory, f"c4-train.{written // file_documents:05d}.json.gz")
        with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as out:
            for i in range(written, written + n):
                doc = dict(sample[i % len(sample)])
                doc["text"] = f"{doc['text']}\n[copy {i}]"
                out.write(json.dumps(doc) + "\n")
        written += n
    return os.path.join(directory, "c4-train.*.json.gz")


def _plain_example(element, seed: int) -> bytes:
    """(file name, JSON line) -> serialized tf.train.Example with the same features as the kit's records.

    The Example protos come from tensorflow.core.example, the modules gristmill.records uses (importing
    them still imports the tensorflow package, about 9 s here, once per process in both pipelines).
    """
    from tensorflow.core.example import example_pb2, feature_pb2

    from gristmill.documents import document_id
    from gristmill.scoring.random_score import random_score
    source, line = element
    doc = json.loads(line)
    doc_id = document_id(doc.get("url", ""), doc["text"])

    def b(value: str):
        return feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=[value.encode("utf-8")]))

    features = {"id": b(doc_id), "text": b(doc["text"]), "url": b(doc.get("url", "")),
                "timestamp": b(str(doc.get("timestamp", ""))), "source": b(source),
                f"score/random/seed-{seed}": feature_pb2.Feature(
                    float_list=feature_pb2.FloatList(value=[random_score(doc_id, seed)]))}
    return example_pb2.Example(features=feature_pb2.Features(feature=features)).SerializeToString()


def run_plain(pattern: str, output: str) -> int:
    """The plain Beam pipeline; returns the number of records written."""
    import apache_beam as beam
    from apache_beam.io.textio import ReadFromTextWithFilename
    from apache_beam.options.pipeline_options import PipelineOptions
    with beam.Pipeline(options=PipelineOptions([f"--runner={LOCAL_RUNNER}"])) as p:
        (p | "Read" >> ReadFromTextWithFilename(pattern)
         | "ParseHashSerialise" >> beam.Map(_plain_example, 0)
         | "Write" >> beam.io.WriteToTFRecord(os.path.join(output, "scored"), file_name_suffix=".tfrecord"))
    from gristmill import records
    written = 0
    for path in glob.glob(os.path.join(output, "scored*.tfrecord")):
        with open(path, "rb") as f:
            written += sum(1 for _ in records.iter_tfrecords(f))
    return written


def run_kit(pattern: str, output: str) -> int:
    """`gristmill score random` through the kit; returns the number of records written."""
    from gristmill.pipelines import score_random
    manifest = score_random.run(["--input", pattern, "--output", output])
    return manifest["counts"]["written"]


def child(which: str, pattern: str, output: str, profile: bool) -> None:
    """Runs one pipeline in this process and prints {seconds, written, peak_rss_mb} as JSON."""
    run = {"plain": run_plain, "kit": run_kit}[which]
    start = time.perf_counter()
    if profile:
        profiler = cProfile.Profile()
        written = profiler.runcall(run, pattern, output)
        stats = pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative")
        stats.print_stats(40)
        stats.sort_stats("tottime").print_stats(25)
    else:
        written = run(pattern, output)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    print(json.dumps({"seconds": seconds, "written": written, "peak_rss_mb": peak}))


def measure(which: str, pattern: str, output: str, profile: bool = False) -> dict:
    """Runs one pipeline in a fresh subprocess and returns its measurements."""
    cmd = [sys.executable, os.path.abspath(__file__), "--_child", which, "--_pattern", pattern, "--_output", output]
    if profile:
        cmd.append("--profile")
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"), TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, env=env, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=20_000, help="documents in the corpus (200000, 1000000)")
    parser.add_argument("--file_documents", type=int, default=10_000, help="documents per json.gz file")
    parser.add_argument("--profile", action="store_true", help="profile the kit job (use a small --documents)")
    parser.add_argument("--_child", choices=("plain", "kit"), help=argparse.SUPPRESS)
    parser.add_argument("--_pattern", help=argparse.SUPPRESS)
    parser.add_argument("--_output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        child(args._child, args._pattern, args._output, args.profile)
        return 0
    with tempfile.TemporaryDirectory(prefix="gristmill-bench-") as tmp:
        start = time.perf_counter()
        pattern = make_corpus(tmp, args.documents, args.file_documents)
        print(f"corpus: {args.documents} documents in {len(glob.glob(pattern))} files "
              f"({sum(os.path.getsize(p) for p in glob.glob(pattern)) / 1e6:.0f} MB gzip), "
              f"made in {time.perf_counter() - start:.0f} s; load average {os.getloadavg()[0]:.1f}", flush=True)
        if args.profile:
            measure("kit", pattern, os.path.join(tmp, "kit"), profile=True)
            return 0
        plain = measure("plain", pattern, os.path.join(tmp, "plain"))
        kit = measure("kit", pattern, os.path.join(tmp, "kit"))
        rerun = measure("kit", pattern, os.path.join(tmp, "kit"))
        load = os.getloadavg()[0]
    for name, m in (("plain Beam", plain), ("gristmill kit", kit)):
        print(f"{name:<14} {m['written']:>9} docs  {m['seconds']:7.1f} s  {m['written'] / m['seconds']:8.0f} docs/s  "
              f"peak RSS {m['peak_rss_mb']:6.0f} MB")
    print(f"kit / plain throughput: {plain['seconds'] / kit['seconds']:.2f}x")
    print(f"no-op rerun (resume, every unit done): {rerun['seconds']:.1f} s, peak RSS {rerun['peak_rss_mb']:.0f} MB")
    print(f"load average at the end: {load:.1f}")
    if kit["written"] != plain["written"]:
        print(f"WARNING: the kit wrote {kit['written']} records, plain Beam {plain['written']}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
