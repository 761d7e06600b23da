"""Layers: the ground floor (models/, scoring/, sampling, records, io, span corruption) never imports
training/, eval/ or pipelines/ (CONTRIBUTING.md, "Layers"). Every import statement counts, also
those inside functions, since a lazy import is still a dependency."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent / "gristmill"
GROUND_FLOOR = ("scoring", "models", "sampling.py", "records.py", "io.py", "span_corruption.py")
UPPER = ("gristmill.training", "gristmill.eval", "gristmill.pipelines")
# (module, imported name) pairs that break the rule today and are to be removed; keep this empty.
KNOWN_EXCEPTIONS: set[tuple[str, str]] = set()


def _ground_floor_files():
    for name in GROUND_FLOOR:
        path = ROOT / name
        yield from sorted(path.rglob("*.py")) if path.is_dir() else [path]


def _imported(tree: ast.AST):
    """Every module name an import statement brings in (`from a import b` gives a and a.b)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def _upper(name: str) -> bool:
    return any(name == layer or name.startswith(layer + ".") for layer in UPPER)


def test_ground_floor_imports_nothing_above_it():
    files = list(_ground_floor_files())
    assert len(files) > 10 and all(f.exists() for f in files)
    found = set()
    for path in files:
        module = path.relative_to(ROOT.parent).with_suffix("").as_posix().replace("/", ".")
        found |= {(module, name) for name in _imported(ast.parse(path.read_text(encoding="utf-8"))) if _upper(name)}
    assert found - KNOWN_EXCEPTIONS == set(), "ground-floor modules import training/, eval/ or pipelines/"
    assert KNOWN_EXCEPTIONS - found == set(), "fixed: drop these from KNOWN_EXCEPTIONS"


# The commands at the top: they run what eval/ (and everything below) holds; nothing in eval/ reaches up to them.
COMMANDS = ("gristmill.experiment", "gristmill.demo", "gristmill.curate")


def test_eval_imports_no_command_above_it():
    files = sorted((ROOT / "eval").rglob("*.py"))
    assert any(f.name == "grid.py" for f in files) and any(f.name == "results.py" for f in files)
    found = set()
    for path in files:
        module = path.relative_to(ROOT.parent).with_suffix("").as_posix().replace("/", ".")
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found |= {(module, name) for name in _imported(tree)
                  if any(name == c or name.startswith(c + ".") for c in COMMANDS)}
    assert found == set(), "eval/ imports a command module (gristmill/experiment.py, demo.py, curate.py)"
