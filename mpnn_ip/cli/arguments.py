"""The ``key=value`` command lines of ``mpnn-import`` and ``mpnn-lammps``: their errors, worded alike."""

from __future__ import annotations

from collections.abc import Sequence

from mpnn_ip.errors import ConfigError


def unknown_option(arg: str, key: str, options: Sequence[str], prog: str) -> ConfigError:
    """The error for ``arg`` (``key=value``) whose key is none of ``options``."""
    known = ", ".join(k + "=" for k in options)
    return ConfigError(f"{arg}: unknown option {key!r}; the options are {known} (see {prog} --help)")


def the_one(items: list[str], what: str, usage: str) -> str:
    """The one positional argument of ``items``; ``ConfigError`` naming ``what`` and the ``usage`` otherwise."""
    if len(items) != 1:
        raise ConfigError(f"give exactly one {what} (got {items or 'none'}). Usage: {usage}")
    return items[0]


def require(options: dict, key: str, hint: str, usage: str) -> None:
    """``ConfigError`` (``hint`` says what to add) unless ``options[key]`` is given and not empty."""
    if not options.get(key):
        raise ConfigError(f"no {key} given: add {hint}. Usage: {usage}")
