"""What a manifest records about the run that wrote it: package versions and UTC times."""

from __future__ import annotations

import datetime
import importlib.metadata
import platform
from typing import Iterable

PACKAGES = ("gristmill", "apache-beam", "tensorflow-cpu", "tensorflow", "jax", "jaxlib", "flax", "numpy")


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str]:
    """Python's version and the installed version of each named distribution (absent ones left out)."""
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def utc_now() -> str:
    """The current UTC time in ISO 8601 (seconds), for manifests."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
