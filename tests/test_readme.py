"""The README against the code: every flag it names exists, every default it states is the code's.

The README's convention (its "Commands" section says it to readers):

* Usage blocks are the fenced code blocks; a command is a line starting with `gristmill <command>`
  plus its continuation lines (after a trailing backslash, or indented). Every `--name` token on
  it must be a flag of that command, as `gristmill <command> --help` builds it, or one of Beam's
  pipeline options for the commands that pass them through (Beam jobs and curate).
* In such a command, `[--flag value]` states a default: `value` (the first of `a|b` choices)
  must equal the `(default: X)` that `--help` prints, or the parser's default when `--help`
  prints none. A value in capitals (`N`, `FILE`, `DIR`, `ID1,ID2`) is a placeholder.
* A flag table is a Markdown table whose header starts `| flag | default |`; each row's flag must
  exist and its default must be the code's (`required`, `none`, `off`, `on` as words). A table
  under a `### gristmill <command>` heading describes that command; one above every such heading
  the flags all Beam jobs share, so it is checked against each of them.
* The density kernel table's numbers are `gristmill.scoring.density`'s defaults per kernel, and
  the Layout map names every module of the package.

Help is produced in-process (`gristmill.cli.main([..., "--help"])`); the parser that printed it is
captured for the defaults that `--help` does not show (booleans, `gc --keep`).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
from typing import Optional

import pytest

from gristmill import cli, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
PASS_THROUGH = "pipeline options pass through"  # the epilog of every Beam job's --help
FLAG = re.compile(r"--([A-Za-z][A-Za-z0-9_]*)")
BRACKET = re.compile(r"\[([^\[\]]*)\]")
HELP_DEFAULT = re.compile(r"\(default: ([^()]*(?:\([^()]*\)[^()]*)*)\)")


def _readme() -> str:
    with open(README, encoding="utf-8") as f:
        return f.read()


# --------------------------------------------------------------------------- parsing the README


def fenced_blocks(text: str) -> list[str]:
    """The contents of every ``` fenced block."""
    return re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)


def commands_in(block: str) -> list[str]:
    """Each `gristmill ...` command of a block, continuation lines joined (backslash or indent)."""
    commands, current = [], None
    for line in block.splitlines():
        continues = current is not None and (current.endswith("\\") or line[:1].isspace())
        if continues and line.strip():
            current = current.rstrip("\\").rstrip() + " " + line.strip()
            continue
        if current is not None:
            commands.append(current.rstrip("\\").rstrip())
        current = line.strip() if line.startswith("gristmill ") else None
    if current is not None:
        commands.append(current.rstrip("\\").rstrip())
    return commands


def resolve(command: str) -> tuple[tuple[str, ...], str]:
    """(command words as the CLI knows them, the rest of the line)."""
    words = command.split()[1:]
    for known in sorted(cli.COMMANDS, key=len, reverse=True):
        if tuple(words[:len(known)]) == known:
            return known, " ".join(words[len(known):])
    raise AssertionError(f"README names an unknown command: {command!r}")


def is_placeholder(value: str) -> bool:
    """`N`, `FILE`, `DIR`, `ID1,ID2`: capitals and no lower case."""
    return any(c.isupper() for c in value) and not any(c.islower() for c in value)


def stated_defaults(rest: str) -> dict[str, str]:
    """flag -> the default a usage line states with `[--flag value]` (first of `a|b` choices)."""
    out = {}
    for group in BRACKET.findall(rest):
        match = re.fullmatch(r"\s*--([A-Za-z][A-Za-z0-9_]*)[ =]([^\s|]+)(?:\|\S+)?\s*", group)
        if match and not is_placeholder(match.group(2)):
            out[match.group(1)] = match.group(2)
    return out


def flag_tables(text: str) -> list[tuple[Optional[tuple[str, ...]], list[tuple[str, str]]]]:
    """(the command of the section or None for the shared table, [(flag, default cell)]) per table."""
    tables, section = [], None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("#"):
            named = re.match(r"^### `(gristmill [^`]+)`", line)
            section = resolve(named.group(1))[0] if named else None
        if re.match(r"^\|\s*flag\s*\|\s*default\s*\|", line, flags=re.I):
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                cells = [c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]]
                name = FLAG.search(cells[0])
                assert name, f"flag table row without a flag: {row}"
                rows.append((name.group(1), cells[1].strip("`")))
            tables.append((section, rows))
    return tables


# --------------------------------------------------------------------------- the code's side


class Help:
    """One command's `--help` text and the parser that printed it."""

    def __init__(self, words: tuple[str, ...]):
        captured: list[argparse.ArgumentParser] = []
        original = argparse.ArgumentParser.print_help

        def recording(parser, file=None):
            captured.append(parser)
            return original(parser, file)

        out = io.StringIO()
        argparse.ArgumentParser.print_help = recording
        try:
            with contextlib.redirect_stdout(out):
                cli.main([*words, "--help"])
        except SystemExit as exited:
            assert exited.code in (0, None), f"gristmill {' '.join(words)} --help exited {exited.code}"
        except Exception as err:  # noqa: BLE001 (a --help that crashes is the finding)
            raise AssertionError(f"gristmill {' '.join(words)} --help failed: {err!r}") from err
        else:
            raise AssertionError(f"gristmill {' '.join(words)} --help returned without printing help")
        finally:
            argparse.ArgumentParser.print_help = original
        assert captured, f"gristmill {' '.join(words)} --help printed no argparse help"
        self.text = out.getvalue()
        self.parser = captured[-1]
        self.actions = {s[2:]: a for a in self.parser._actions for s in a.option_strings  # noqa: SLF001
                        if s.startswith("--")}
        self.beam = PASS_THROUGH in self.text

    def default(self, flag: str) -> tuple[bool, object]:
        """(whether --help prints it, the default): `(default: X)` from --help, else the parser's."""
        action = self.actions[flag]
        shown = HELP_DEFAULT.findall(action.help or "")
        if shown:
            return True, shown[-1].strip()
        return False, action.default


@pytest.fixture(scope="module")
def helps():
    cache: dict[tuple[str, ...], Help] = {}

    def get(words: tuple[str, ...]) -> Help:
        if words not in cache:
            cache[words] = Help(words)
        return cache[words]
    return get


@pytest.fixture(scope="module")
def beam_flags() -> set[str]:
    """Beam's own pipeline options (`--runner`, `--project`, ..., the Dask ones when Dask is here)."""
    try:
        import apache_beam.runners.dask.dask_runner  # noqa: F401 (registers DaskOptions)
        flags.beam_parser.cache_clear()
        names = set(flags.names(flags.beam_parser()))
    except ImportError:  # without Dask the --dask_ options are still Beam's, named by gristmill.flags
        names = set(flags.names(flags.beam_parser())) | {"dask_client_address"}
    return names


def _same(stated: str, is_help: bool, code: object) -> bool:
    if is_help:
        return stated == code
    if isinstance(code, bool):
        return stated.lower() in (("true", "on") if code else ("false", "off"))
    if isinstance(code, (tuple, list)):
        return stated == ",".join(map(str, code))
    if isinstance(code, (int, float)):
        try:
            return float(stated) == float(code)
        except ValueError:
            return False
    return code is not None and stated == str(code)


def _table_default_ok(cell: str, action: argparse.Action, is_help: bool, code: object) -> bool:
    word = cell.split()[0].lower() if cell.split() else ""
    if word == "required":
        return action.required or (not is_help and code in (None, ()))
    if word in ("none", "off"):
        return not is_help and code in (None, False, ())
    if word == "on":
        return not is_help and code is True
    return _same(cell.split()[0], is_help, code)


def _allowed(helps, words: tuple[str, ...], beam: set[str]) -> set[str]:
    help_ = helps(words)
    allowed = set(help_.actions)
    if help_.beam:
        allowed |= beam
    if words == ("curate",):  # curate hands every further flag to each step: any job's flag, Beam's
        allowed |= beam
        for other in cli.COMMANDS:
            if other[0] == "score" or other == ("select",):
                allowed |= set(helps(other).actions)
    return allowed


# --------------------------------------------------------------------------- the tests


def test_every_flag_in_a_usage_block_exists_and_every_stated_default_is_the_codes(helps, beam_flags):
    commands = [c for block in fenced_blocks(_readme()) for c in commands_in(block)]
    assert len(commands) >= 15, commands  # every command's usage block was found
    problems = []
    for command in commands:
        words, rest = resolve(command)
        allowed = _allowed(helps, words, beam_flags)
        for name in FLAG.findall(rest):
            if name not in allowed:
                problems.append(f"gristmill {' '.join(words)}: README names --{name}, which it does not have")
        for name, value in stated_defaults(rest).items():
            if name not in helps(words).actions:
                continue  # reported above, or a Beam option (their defaults are Beam's)
            is_help, code = helps(words).default(name)
            if not _same(value, is_help, code):
                problems.append(f"gristmill {' '.join(words)}: README states [--{name} {value}], "
                                f"the code's default is {code!r}")
    assert not problems, "\n".join(problems)


def test_flag_tables_name_real_flags_with_the_codes_defaults(helps):
    tables = flag_tables(_readme())
    assert tables, "the README's shared flag table was not found"
    beam_jobs = [w for w in cli.COMMANDS if w[0] == "score" or w == ("select",)]
    problems = []
    for section, rows in tables:
        for words in ([section] if section else beam_jobs):
            help_ = helps(words)
            for name, cell in rows:
                if name not in help_.actions:
                    problems.append(f"gristmill {' '.join(words)}: the README's table names --{name}, which it lacks")
                    continue
                is_help, code = help_.default(name)
                if not _table_default_ok(cell, help_.actions[name], is_help, code):
                    problems.append(f"gristmill {' '.join(words)}: the README's table says --{name} defaults to "
                                    f"{cell!r}, the code's default is {code!r}")
    assert not problems, "\n".join(problems)


def test_the_density_kernel_table_states_the_sketch_defaults():
    from gristmill.scoring import density
    text = _readme()
    start = text.index("| `--kernel` | `cosine` (default) | `l2`")
    rows = {}
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.split("|")[1:-1]]
        name = FLAG.search(cells[0])
        if name:
            rows[name.group(1)] = (cells[1], cells[2])
    cosine = density.make_sketch_config(384, kernel="cosine")
    l2 = density.make_sketch_config(384, kernel="l2", bandwidth=1.0)
    assert density.DEFAULT_KERNEL == "cosine"
    for flag, field in (("rows", "rows"), ("buckets", "buckets"), ("hashes_per_row", "hashes_per_row")):
        for cell, config in zip(rows[flag], (cosine, l2)):
            numbers = [int(n) for n in re.findall(r"(?<![\w^])(\d+)(?![\w^])", cell.replace(",", ""))]
            assert numbers and numbers[0] == getattr(config, field), (flag, cell, getattr(config, field))


def test_the_layout_map_names_every_module():
    text = _readme()
    layout = fenced_blocks(text[text.index("## Layout"):])[0]
    package = os.path.join(REPO, "gristmill")
    modules = {name for _, _, files in os.walk(package) for name in files
               if name.endswith(".py") and name != "__init__.py"}
    missing = sorted(m for m in modules if m not in layout)
    assert not missing, f"README's Layout does not name: {missing}"
    existing = modules | {name for _, _, files in os.walk(os.path.join(REPO, "tests")) for name in files}
    named = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*\.py\b", layout))
    assert not named - existing, f"README's Layout names modules that do not exist: {sorted(named - existing)}"


def test_the_readme_and_docs_cite_nothing_outside_the_repository():
    for path in ("README.md", "CONTRIBUTING.md", "docs/design.md", "docs/paper.md"):
        with open(os.path.join(REPO, path), encoding="utf-8") as f:
            text = f.read()
        for outside in ("../shared", "/work/", "PAPER.md", "DESIGN.md", "STYLE.md"):
            assert outside not in text, f"{path} cites {outside}"
