"""Command-line flags derived from configuration dataclasses: the one parser of every gristmill command.

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class RandomScoreConfig:
        seed: int = dataclasses.field(default=0, metadata={"help": "changes every score"})

    config = flags.parse_config(RandomScoreConfig, argv, "gristmill score random")   # --seed INT

Field types map to flags: `int`, `float`, `str` (with `metadata["choices"]`), `bool` (`--x` /
`--nox`, or `--x=true|false`), `Optional[...]` of those (default None), tuples of `str`, `int`
or `float` (comma-separated or repeated), and a nested config dataclass (its fields are flags
too). A field without a default is a required flag. `metadata["flag"]` names the flag when it
differs from the field; `False` keeps the field off the command line.

`parse` refuses what a typo or the shell produces: an unknown flag (with the nearest known one,
`unknown flag --sed; did you mean --seed?`) and a stray argument (an unquoted glob the shell
expanded). With `beam=True` the flags Beam's `PipelineOptions` know (`--runner`, `--project`, ...)
are returned for Beam instead.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import dataclasses
import difflib
import functools
import types
import typing
from typing import Any, Optional, Sequence, TypeVar

from gristmill.errors import UsageError

C = TypeVar("C")
_CHECKING = contextvars.ContextVar("gristmill_flags_checking", default=False)
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class FlagError(UsageError):
    """A command line names an unknown flag, has a stray argument, or a flag's value is bad."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises FlagError instead of exiting, and never abbreviates flags."""

    def __init__(self, prog: Optional[str] = None, description: Optional[str] = None, **kwargs):
        super().__init__(prog=prog, description=description, allow_abbrev=False,
                         formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

    def error(self, message: str):
        raise FlagError(message)

    def add_value_provider_argument(self, *args, **kwargs):
        """What Beam's option classes call for their templated options (a plain flag here)."""
        self.add_argument(*args, **kwargs)


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


class _ExtendTuple(argparse.Action):
    """`--x a,b --x c` -> ("a", "b", "c") of the element type; the first use replaces the default."""

    def __init__(self, *args, element: type = str, **kwargs):
        super().__init__(*args, **kwargs)
        self.element = element

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            parts = tuple(self.element(part.strip()) for part in values.split(",") if part.strip())
        except ValueError:
            raise argparse.ArgumentError(self, f"expected comma-separated {self.element.__name__} values, "
                                               f"got {values!r}") from None
        seen = getattr(namespace, "_extended", set())
        current = tuple(getattr(namespace, self.dest) or ()) if self.dest in seen else ()
        setattr(namespace, self.dest, current + parts)
        namespace._extended = seen | {self.dest}


def _base_type(annotation: Any) -> Any:
    """The non-None type of a field annotation."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported union {annotation}")
        return args[0]
    return annotation


def _fields(config_class: type) -> list[tuple[dataclasses.Field, Any, str]]:
    """(field, its type, its flag name) of the fields that are flags."""
    hints = typing.get_type_hints(config_class)
    out = []
    for f in dataclasses.fields(config_class):
        name = f.metadata.get("flag", f.name)
        if name is not False:
            out.append((f, _base_type(hints[f.name]), name))
    return out


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def add_flags(parser: argparse.ArgumentParser, config_class: type, defaults: dict[str, Any] | None = None) -> None:
    """Adds one flag per field of a config dataclass (`--name`), with its type, default and help.

    defaults: overrides of the dataclass defaults (a job's own defaults for a shared config).
    """
    defaults = defaults or {}
    for field, kind, name in _fields(config_class):
        if dataclasses.is_dataclass(kind):
            add_flags(parser, kind, defaults)
            continue
        default = defaults.get(field.name, _default(field))
        required = default is dataclasses.MISSING
        default = None if required else default
        help_text = field.metadata.get("help", "").replace("%", "%%")  # argparse formats help with %
        if default not in (None, ()) and not isinstance(default, bool):
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
            help_text += f" (default: {shown})"
        common = {"dest": field.name, "help": help_text, "required": required}
        if kind is bool:
            parser.add_argument(f"--{name}", nargs="?", const=True, default=default, type=_parse_bool, **common)
            parser.add_argument(f"--no{name}", dest=field.name, action="store_false", help=argparse.SUPPRESS)
        elif typing.get_origin(kind) is tuple and typing.get_args(kind)[0] in (int, float, str):
            common["help"] += " (comma-separated or repeated)"
            parser.add_argument(f"--{name}", action=functools.partial(_ExtendTuple, element=typing.get_args(kind)[0]),
                                default=tuple(default or ()), **common)
        elif kind in (int, float, str):
            parser.add_argument(f"--{name}", type=kind, default=default, choices=field.metadata.get("choices"),
                                **common)
        else:
            raise TypeError(f"{config_class.__name__}.{field.name}: unsupported flag type {kind}")


def from_namespace(namespace: argparse.Namespace | dict[str, Any], config_class: type[C], **overrides) -> C:
    """Builds the config dataclass from parsed flags (fields without a flag keep their default)."""
    values = vars(namespace) if isinstance(namespace, argparse.Namespace) else dict(namespace)
    kwargs = {}
    for field, kind, _ in _fields(config_class):
        if dataclasses.is_dataclass(kind):
            kwargs[field.name] = from_namespace(values, kind)
        elif field.name in values:
            kwargs[field.name] = values[field.name]
    kwargs.update(overrides)
    return config_class(**kwargs)


def to_argv(config: Any) -> list[str]:
    """The flags that reproduce a config dataclass (None fields are left out)."""
    argv = []
    for field, kind, name in _fields(type(config)):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(kind):
            argv += to_argv(value)
        elif value is not None:
            argv.append(f"--{name}={','.join(map(str, value)) if isinstance(value, tuple) else value}")
    return argv


@functools.cache
def beam_parser() -> Parser:
    """A parser of every option Beam's `PipelineOptions` subclasses define (built once)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    parser = Parser(add_help=False, conflict_handler="resolve")
    for cls in {str(c): c for c in PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(parser)  # noqa: SLF001 (how Beam itself lists its options)
    return parser


def _register_dask_options() -> None:
    """Makes Beam's DaskOptions (`--dask_client_address`, ...) known to `beam_parser`: they exist only
    once Beam's Dask runner module is imported, which needs Dask (imported only when a flag asks)."""
    try:
        import apache_beam.runners.dask.dask_runner  # noqa: F401
    except ImportError as err:
        raise FlagError(f"the --dask_ flags need Dask ({err}): pip install 'gristmill[dask]'") from err
    if "dask_client_address" not in names(beam_parser()):
        beam_parser.cache_clear()


def names(parser: argparse.ArgumentParser) -> list[str]:
    """The flags a parser knows, without their dashes."""
    return [s[2:] for action in parser._actions for s in action.option_strings if s.startswith("--")]  # noqa: SLF001


def near(arg: str, known: Sequence[str], cutoff: float = 0.6) -> Optional[str]:
    """The known flag nearest to a flag argument (`--sed=3` -> `seed`), or None."""
    found = difflib.get_close_matches(arg.split("=", 1)[0].lstrip("-"), known, n=1, cutoff=cutoff)
    return found[0] if found else None


def unknown_flag(arg: str, known: Sequence[str]) -> FlagError:
    """`unknown flag --sed; did you mean --seed?`"""
    guess = near(arg, known)
    hint = f"; did you mean --{guess}?" if guess else " (--help lists the flags)"
    return FlagError(f"unknown flag {arg.split('=', 1)[0]}{hint}")


def _refuse(arg: str, argv: Sequence[str], parsers: list[argparse.ArgumentParser]) -> FlagError:
    """The error for an argument no parser took: an unknown flag, or a stray argument."""
    if arg.startswith("-"):
        return unknown_flag(arg, [name for p in parsers for name in names(p)])
    before = list(argv)[:list(argv).index(arg)] if arg in argv else []
    flag = next((a.split("=", 1)[0] for a in reversed(before) if a.startswith("--")), None)
    pattern = f"the {flag} pattern" if flag else "the pattern"
    return FlagError(f"unexpected argument {arg!r}: quote {pattern} so the shell does not expand it")


def parse(parser: argparse.ArgumentParser, argv: Sequence[str], *, beam: bool = False
          ) -> tuple[argparse.Namespace, list[str]]:
    """Parses argv; returns (the flags, the Beam pipeline options among them: empty unless beam).

    Raises FlagError for an unknown flag, a stray argument or a bad value; `--help` prints the
    flags and exits 0.
    """
    argv = list(argv)
    namespace, rest = parser.parse_known_args(argv)
    if beam and any(a.startswith("--dask_") for a in rest):
        _register_dask_options()
    parsers = [parser, beam_parser()] if beam else [parser]
    left = beam_parser().parse_known_args(rest)[1] if beam and rest else rest
    if left:
        raise _refuse(left[0], argv, parsers)
    return namespace, rest


def parse_config(config_class: type[C], argv: Sequence[str], prog: str, description: Optional[str] = None) -> C:
    """A command's config dataclass from its command line (no Beam options)."""
    parser = Parser(prog=prog, description=description)
    add_flags(parser, config_class)
    return from_namespace(parse(parser, argv)[0], config_class)


class Checked(Exception):
    """Raised by `checkpoint()` inside `checking()`: the command's flags are valid; it did not run."""


@contextlib.contextmanager
def checking():
    """Within it a command stops once its flags are parsed: `with checking(): run(argv)` raises Checked
    when argv is valid (curate checks every step's flags this way before running any)."""
    token = _CHECKING.set(True)
    try:
        yield
    finally:
        _CHECKING.reset(token)


def checkpoint() -> None:
    """Called by a command once its flags are parsed and checked: inside `checking()`, stop there."""
    if _CHECKING.get():
        raise Checked()
