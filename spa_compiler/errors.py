"""Exception hierarchy. Every error a user can cause is a SpaError subclass with a one-line message.

Exit codes used by the CLI (documented in the README):
    0 ok, 1 pass failure, 2 usage or missing requirement, 3 invalid input model
    (130 / 143: stopped by SIGINT / SIGTERM, see `spa_compiler.signals`).
"""

from __future__ import annotations


class SpaError(Exception):
    """Base class of the errors spa-compiler reports to the user.

    Attributes:
        exit_code: The CLI's exit status for this kind of error.
        hint: How to fix it, one sentence (appended to the message by the CLI).
    """

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def one_line(self) -> str:
        """The message and hint on one line, as the CLI prints it."""
        text = " ".join(str(self).split())
        if self.hint:
            text += f" (to fix: {self.hint})"
        return text


class UsageError(SpaError):
    """Bad command-line arguments or options (exit 2)."""

    exit_code = 2


class InvalidModelError(SpaError):
    """The input is not a loadable, valid ONNX model (exit 3)."""

    exit_code = 3


class UnsupportedModelError(SpaError):
    """A valid model that is outside what spa-compiler handles, e.g. an opset out of range (exit 3)."""

    exit_code = 3


class MissingRequirementError(SpaError):
    """A pass needs something the context does not provide (exit 2)."""

    exit_code = 2


class PreconditionError(SpaError):
    """A pass's options or the model are outside what the pass handles (exit 2)."""

    exit_code = 2


class ValidationError(SpaError):
    """A rewritten model failed the checker or strict shape inference (exit 1)."""

    exit_code = 1


class PassError(SpaError):
    """A pass failed while running (exit 1)."""

    exit_code = 1


class OutputError(UsageError):
    """An output cannot be written where asked (folder missing or read-only, disk full) (exit 2)."""


class InterfaceError(SpaError):
    """A rewrite would change the model's inputs or outputs (names, order, dtypes) (exit 1)."""

    exit_code = 1
