"""Errors a user can cause. Each message says what went wrong and what to do about it."""

from __future__ import annotations


class UserError(Exception):
    """Base class for errors caused by input, files or settings rather than by a bug.

    The CLI prints the message without a traceback and exits non-zero; the UI shows it in the chat.
    """


class ModelSourceError(UserError):
    """A model could not be found or fetched (bad path, no network for a first download, bad checksum)."""


class CheckpointError(UserError):
    """A weights file is not what we can load (unknown architecture, missing tensor, wrong shape, truncated)."""


class ContextOverflowError(UserError):
    """A prompt does not fit into the model's context window."""


class SamplingParamsError(UserError, ValueError):
    """A sampling option has an invalid value."""
