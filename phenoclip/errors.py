"""User-facing errors: each carries an exit code and renders as one line.

A user error names the file and what is wrong with it, and says what to do; the CLI prints it
without a traceback (``PHENOCLIP_DEBUG=1`` shows one). Anything that is not a
:class:`PhenoclipError` is a bug and exits with :data:`EXIT_INTERNAL`.
"""

from __future__ import annotations

import os

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_INPUT_MISSING = 3
EXIT_MALFORMED = 4
EXIT_INCONSISTENT = 5
EXIT_WRITE = 6
EXIT_INTERNAL = 70


class PhenoclipError(Exception):
    """Base class of every error meant for the user.

    Parameters
    ----------
    message:
        What is wrong, as a sentence fragment ("not a VCF: no #CHROM header line").
    path:
        The file or folder concerned, shown first.
    hint:
        What the user can do about it.
    """

    exit_code = EXIT_INTERNAL

    def __init__(self, message: str, path: str | os.PathLike | None = None, hint: str | None = None):
        self.message = message
        self.path = None if path is None else os.fspath(path)
        self.hint = hint
        super().__init__(self.line())

    def line(self) -> str:
        """The single line printed to stderr."""
        text = f"{self.path}: {self.message}" if self.path else self.message
        if self.hint:
            text += f" ({self.hint})"
        return text


class UsageError(PhenoclipError):
    """The command line asks for something impossible (exit 2)."""

    exit_code = EXIT_USAGE


class InputMissingError(PhenoclipError):
    """An input file or folder does not exist or cannot be read (exit 3)."""

    exit_code = EXIT_INPUT_MISSING


class MalformedInputError(PhenoclipError):
    """An input exists but its content is not what the format requires (exit 4)."""

    exit_code = EXIT_MALFORMED


class InconsistentInputError(PhenoclipError):
    """Inputs disagree with each other: samples, shapes, schema (exit 5)."""

    exit_code = EXIT_INCONSISTENT


class OutputError(PhenoclipError):
    """An output cannot be written (exit 6)."""

    exit_code = EXIT_WRITE


def require_readable(path: str | os.PathLike, what: str = "file") -> str:
    """Return ``path`` as a string, raising :class:`InputMissingError` if it cannot be read."""
    p = os.fspath(path)
    if not os.path.exists(p):
        raise InputMissingError(f"{what} does not exist", p, "check the path")
    if what == "folder":
        if not os.path.isdir(p):
            raise InputMissingError("not a folder", p)
    elif os.path.isdir(p):
        raise InputMissingError(f"is a folder, expected a {what}", p)
    if not os.access(p, os.R_OK):
        raise InputMissingError("cannot be read (permission denied)", p)
    return p


def require_writable_parent(path: str | os.PathLike) -> str:
    """Check that the folder that will hold ``path`` exists and is writable."""
    p = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(p))
    if not os.path.isdir(parent):
        raise OutputError("output folder does not exist", parent, "create it first")
    if not os.access(parent, os.W_OK):
        raise OutputError("output folder is not writable", parent)
    return p
