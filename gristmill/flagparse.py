"""Parsing a subcommand's absl flags, each command with its own FlagValues (no global flag clashes)."""

from __future__ import annotations

from absl import flags

HELP_FLAGS = ("-h", "--help", "-help", "--helpfull")


class FlagError(ValueError):
    """A subcommand's flags are missing, unknown or malformed."""


def parse(fv: flags.FlagValues, argv: list[str], usage: str) -> flags.FlagValues:
    """Parses argv into fv; `--help` prints the usage line and every flag, then exits 0.

    usage: the command's synopsis, e.g. "gristmill demo [--output DIR]"; its first two words
    name the program in absl's messages.
    """
    if any(arg in HELP_FLAGS for arg in argv):
        print(f"usage: {usage}\n\n{fv.get_help()}")
        raise SystemExit(0)
    try:
        fv([" ".join(usage.split()[:2])] + list(argv))
    except flags.Error as err:
        raise FlagError(str(err)) from None
    return fv
