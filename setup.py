"""Installs gristmill: Beam pipelines that score, select and train on web corpora."""
import setuptools

CORE = [
    "apache-beam>=2.60,<3",
    "tensorflow-cpu>=2.16,<3",
    "jax>=0.4.30",
    "flax>=0.10",
    "optax>=0.2",
    "orbax-checkpoint>=0.6",
    "numpy>=1.26",
    "absl-py>=2.0",
    "google-cloud-storage>=2.10",
    "google-api-core>=2.0",  # its exceptions (NotFound, PreconditionFailed), imported by gristmill.io
    "google-auth>=2.0",  # AnonymousCredentials for a GCS emulator
    "google-crc32c>=1.5",
    "protobuf>=3.20",  # tf.train.Example, declared in gristmill.example_proto
    "pyyaml>=6.0",  # curate's YAML configs
    "psutil>=5.9",
    "pyarrow>=14",
    "zstandard>=0.22",
    "isal>=1.6",  # ISA-L gzip: inflates C4's .json.gz about 4x faster than zlib
    "orjson>=3.9",  # JSON lines parsed several times faster than json
    "sentencepiece>=0.2",
    "tokenizers>=0.19",
    "safetensors>=0.5",  # safe_open(framework="numpy") reads bf16 as ml_dtypes.bfloat16
    "ml-dtypes>=0.2",  # numpy's bfloat16, for reading bf16 safetensors
    "gguf>=0.10",
    "matplotlib>=3.7",
    "jinja2>=3.1",
    "scipy>=1.10",
]

setuptools.setup(
    name="gristmill",
    version="0.1.0",
    description="Data-efficient LLM pre-training data curation (Ask-LLM, Density) on Apache Beam and JAX.",
    packages=setuptools.find_packages(include=["gristmill", "gristmill.*"]),
    package_data={"gristmill": ["data/*", "data/*/*", "prompts/*", "eval/templates/*"]},
    python_requires=">=3.10",
    install_requires=CORE,
    extras_require={
        "dev": ["pytest>=7", "scipy>=1.10", "regex>=2023", "ruff>=0.5", "hypothesis>=6.100",
                "gcp-storage-emulator>=2024.8", "datasets>=2.19", "datatrove>=0.3"],
        "gpu": ["jax[cuda12]>=0.4.30"],
        "ref": ["torch==2.13.0", "transformers>=4.40", "sentence-transformers>=3"],
        "dataflow": ["apache-beam[gcp]>=2.60,<3"],
        # --runner dask; gristmill.runners.dask patches Beam's DaskRunner (tested with these versions).
        "dask": ["apache-beam[dask]>=2.60,<3", "dask==2026.8.0", "distributed==2026.8.0"],
    },
    entry_points={"console_scripts": ["gristmill=gristmill.cli:main"]},
)
