"""The base of osum's own errors: imported by the command line without torch, to report them in one line."""

from __future__ import annotations


class OsumError(Exception):
    """An error osum explains itself (the message names the file, key or line, and what to do).

    Each module's error class derives from it and keeps its older base (most are ValueError), so existing
    `except ValueError` callers still catch them.
    """


class MissingExtra(OsumError, ImportError):
    """An optional part of osum was asked for without its packages installed (the message says which extra)."""
