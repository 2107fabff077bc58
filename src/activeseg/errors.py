"""User-facing errors: a problem with input the user can fix (exit code 2, no traceback)."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or options. The message names the file or option and says what to do."""


class TrainingDiverged(UserError):
    """The training loss became NaN or infinite (usually a learning rate far too high)."""
