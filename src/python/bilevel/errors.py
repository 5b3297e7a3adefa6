"""The exceptions of ``bilevel``: one class per variant of the Rust crate's ``Error`` enum.

Every error the library reports arrives as an instance of one of these classes, with the Rust
message unchanged and the variant's data as attributes (``field``, ``what``, ``expected``,
``found``, ``iterations``, ``residual``, ...). All derive from :class:`BilevelError`; errors about
the caller's input also derive from :class:`ValueError`, numerical failures from
:class:`ArithmeticError`, file and network failures from :class:`OSError`, so existing ``except``
clauses keep working. A batch call that fails sets ``index`` to the first failing item.
"""

__all__ = [
    "BilevelError",
    "DimensionMismatchError",
    "InvalidBetaError",
    "BetaOutOfRangeError",
    "NonFiniteError",
    "FloatOverflowError",
    "InaccurateError",
    "NotPositiveDefiniteError",
    "NotConvergedError",
    "InfeasibleError",
    "UnboundedError",
    "SingularError",
    "InvalidInputError",
    "BadDataError",
    "DownloadError",
    "IoError",
]


class BilevelError(Exception):
    """Base class: the message is the Rust error's; keyword data become attributes."""

    def __init__(self, message, **data):
        super().__init__(message)
        self.message = message
        self.index = None
        for key, value in data.items():
            setattr(self, key, value)


class DimensionMismatchError(BilevelError, ValueError):
    """An argument has the wrong size: ``what`` names it, ``expected`` and ``found`` the sizes."""


class InvalidBetaError(BilevelError, ValueError):
    """A spacing parameter ``beta`` that is not finite and > 0."""


class BetaOutOfRangeError(BilevelError, ValueError):
    """A ``beta`` outside the range where ``what`` is defined (``reason`` says why)."""


class NonFiniteError(BilevelError, ValueError):
    """A NaN or infinity in the input ``what``."""


class FloatOverflowError(BilevelError, ArithmeticError):
    """A result ``what`` overflowed float64: the problem's scale is out of range."""


class InaccurateError(BilevelError, ArithmeticError):
    """A result ``what`` whose relative ``residual`` exceeds what float64 can certify."""


class NotPositiveDefiniteError(BilevelError, ValueError):
    """A matrix ``what`` (``Q``) that is not symmetric positive definite."""


class NotConvergedError(BilevelError, ArithmeticError):
    """An iterative ``solver`` stopped after ``iterations`` at ``residual``."""


class InfeasibleError(BilevelError, ValueError):
    """The constraints admit no point (``reason`` carries the certificate's description)."""


class UnboundedError(BilevelError, ValueError):
    """The problem is unbounded below."""


class SingularError(BilevelError, ArithmeticError):
    """A linear system that determines the answer is singular."""


class InvalidInputError(BilevelError, ValueError):
    """An argument ``field`` that is malformed (``reason`` says how)."""


class BadDataError(BilevelError, ValueError):
    """A data file at ``path`` that cannot be read as what it should be."""


class DownloadError(BilevelError, OSError):
    """A download of ``file`` failed from every mirror (``attempts``)."""


class IoError(BilevelError, OSError):
    """A file at ``path`` that cannot be written or read."""


def _input_error(field, reason):
    """The :class:`InvalidInputError` the adapters raise for the argument ``field`` (worded as the
    Rust side words it)."""
    return InvalidInputError(f"invalid input in {field}: {reason}", field=field, reason=reason)


def _complex_error(field, dtype):
    """The error for complex values in the argument ``field``: the layers' data are real, and a
    silent cast would drop the imaginary parts."""
    return _input_error(field, f"complex values (dtype {dtype}): the data are real; pass the real "
                               "part explicitly if that is what is meant")


def _dimension_error(what, expected, found):
    """The :class:`DimensionMismatchError` the adapters raise (worded as the Rust side's)."""
    return DimensionMismatchError(f"dimension mismatch in {what}: expected {expected}, found "
                                  f"{found}", what=what, expected=expected, found=found)
