"""Errors of the importers: a file that would run code, and a source option we do not convert."""

from __future__ import annotations

from mpnn_ip.errors import ConfigError


class UnsafeFileError(ConfigError):
    """A model file whose pickle would call something outside the allow-list (the call never ran)."""


class UnsupportedModelError(ConfigError):
    """A source model with an option, block or format that mpnn_ip does not convert; the message names it."""
