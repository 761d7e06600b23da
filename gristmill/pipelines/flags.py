"""Command-line flags derived from configuration dataclasses, so no flag is copied field by field.

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class RandomScoreConfig:
        seed: int = dataclasses.field(default=0, metadata={"help": "changes every score"})

    parser = argparse.ArgumentParser()
    add_flags(parser, RandomScoreConfig)            # --seed INT
    config = from_namespace(parser.parse_args(argv), RandomScoreConfig)

Field types map to flags: `int`, `float`, `str` (with `metadata["choices"]`), `bool` (`--x` /
`--nox`, or `--x=true|false`), `Optional[...]` of those (default None), and `tuple[str, ...]`
(comma-separated or repeated). `metadata["flag"] = False` keeps a field off the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, TypeVar

C = TypeVar("C")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _parse_tuple(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


class _ExtendTuple(argparse.Action):
    """`--x a,b --x c` -> ("a", "b", "c"); the first use replaces the default."""

    def __call__(self, parser, namespace, values, option_string=None):
        seen = getattr(namespace, "_extended", set())
        current = tuple(getattr(namespace, self.dest) or ()) if self.dest in seen else ()
        setattr(namespace, self.dest, current + _parse_tuple(values))
        namespace._extended = seen | {self.dest}


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """(the non-None type, whether None is allowed) of a field annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported union {annotation}")
        return args[0], True
    return annotation, False


def _fields(config_class: type) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(config_class)
    return [(f, hints[f.name]) for f in dataclasses.fields(config_class) if f.metadata.get("flag", True)]


def add_flags(parser: argparse.ArgumentParser, config_class: type, defaults: dict[str, Any] | None = None) -> None:
    """Adds one flag per field of a config dataclass (`--name`), with its type, default and help.

    defaults: overrides of the dataclass defaults (a job's own defaults for a shared config).
    """
    defaults = defaults or {}
    for field, annotation in _fields(config_class):
        kind, optional = _base_type(annotation)
        default = defaults.get(field.name, field.default if field.default is not dataclasses.MISSING else None)
        help_text = field.metadata.get("help", "")
        if default is not None and default != () and not isinstance(default, bool):
            help_text += f" (default: {default})"
        name = f"--{field.name}"
        if kind is bool:
            parser.add_argument(name, nargs="?", const=True, default=default, type=_parse_bool, help=help_text)
            parser.add_argument(f"--no{field.name}", dest=field.name, action="store_false", help=argparse.SUPPRESS)
        elif typing.get_origin(kind) is tuple:
            parser.add_argument(name, action=_ExtendTuple, default=tuple(default or ()),
                                help=help_text + " (comma-separated or repeated)")
        elif kind in (int, float, str):
            parser.add_argument(name, type=kind, default=default, choices=field.metadata.get("choices"),
                                help=help_text)
        else:
            raise TypeError(f"{config_class.__name__}.{field.name}: unsupported flag type {annotation}")
        del optional


def from_namespace(namespace: argparse.Namespace | dict[str, Any], config_class: type[C], **overrides) -> C:
    """Builds the config dataclass from parsed flags (fields without a flag keep their default)."""
    values = vars(namespace) if isinstance(namespace, argparse.Namespace) else dict(namespace)
    kwargs = {f.name: values[f.name] for f, _ in _fields(config_class) if f.name in values}
    kwargs.update(overrides)
    return config_class(**kwargs)


def to_argv(config: Any) -> list[str]:
    """The flags that reproduce a config dataclass (None fields are left out)."""
    argv = []
    for field, _ in _fields(type(config)):
        value = getattr(config, field.name)
        if value is None:
            continue
        if isinstance(value, tuple):
            value = ",".join(value)
        argv.append(f"--{field.name}={value}")
    return argv
