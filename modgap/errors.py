"""Errors that reach the user as one line (exit code 2), never as a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ModgapError(Exception):
    """A problem with the user's input: bad config, bad data file, bad run folder.

    The CLI prints ``modgap: error: <message>`` and exits with code 2. Messages name the file,
    key or value that is wrong and, where there is one, the closest valid choice.
    """


class ConfigError(ModgapError, ValueError):
    """A configuration key or value is unknown or has the wrong type."""


class DataError(ModgapError, ValueError):
    """A data file is missing, unreadable or inconsistent."""


class RunFolderError(ModgapError):
    """A run folder cannot be used (exists, locked, unwritable, corrupt checkpoint)."""


def closest(word: str, choices: Iterable[str], prefix: str = "") -> str:
    """A ' (did you mean X?)' hint, or a list of the valid choices when nothing is close."""
    choices = sorted(choices)
    match = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    if match:
        return f" (did you mean '{prefix}{match[0]}'?)"
    return f" (choose from: {', '.join(prefix + c for c in choices)})"
