"""Every third-party package gristmill/ imports is declared in setup.py (install_requires or an extra)."""

import ast
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Import name -> the distributions that provide it, where the two names differ.
DISTRIBUTIONS = {
    "apache_beam": ("apache-beam",),
    "google_crc32c": ("google-crc32c",),
    "google.api_core": ("google-api-core",),
    "google.auth": ("google-auth",),
    "google.cloud.storage": ("google-cloud-storage",),
    "google.protobuf": ("protobuf",),
    "ml_dtypes": ("ml-dtypes",),
    "orbax": ("orbax-checkpoint",),
    "tensorflow": ("tensorflow", "tensorflow-cpu"),
    "yaml": ("pyyaml",),
}
NAMESPACES = {"google": 2, "google.cloud": 3}  # namespace packages: how many name parts name a distribution


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    return _normalise(re.split(r"[\[<>=!~;\s]", requirement, maxsplit=1)[0])


def declared() -> tuple[set[str], set[str]]:
    """(install_requires names, names in any extra) from setup.py's literals."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    core: set[str] = set()
    extras: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "CORE" for t in node.targets):
            core = {_requirement_name(r) for r in ast.literal_eval(node.value)}
        if isinstance(node, ast.keyword) and node.arg == "extras_require":
            extras = {_requirement_name(r) for reqs in ast.literal_eval(node.value).values() for r in reqs}
    assert core, "setup.py has no CORE list"
    return core, extras


def _distribution_key(module: str) -> str:
    parts = module.split(".")
    for prefix in sorted(NAMESPACES, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return ".".join(parts[:NAMESPACES[prefix]])
    return parts[0]


def imported() -> dict[str, set[str]]:
    """Third-party modules (distribution keys) gristmill/ imports -> the files importing them."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "gristmill").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = ([f"{node.module}.{alias.name}" for alias in node.names] if node.module in NAMESPACES
                           else [node.module])
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top == "gristmill":
                    continue
                found.setdefault(_distribution_key(module), set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_imported_package_is_declared():
    core, extras = declared()
    missing = {}
    for module, files in imported().items():
        names = {_normalise(n) for n in DISTRIBUTIONS.get(module, (module,))}
        if not names & (core | extras):
            missing[module] = sorted(files)
    assert not missing, f"imported but not declared in setup.py (module: files): {missing}"


def test_the_map_covers_what_it_must():
    """The namespace imports resolve to their distributions (a `from google.cloud import storage` counts)."""
    modules = imported()
    assert {"google.cloud.storage", "google.protobuf", "google.api_core", "google_crc32c"} <= set(modules)
    assert not set(NAMESPACES) & set(modules)
