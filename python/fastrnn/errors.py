"""Exception types fastrnn raises, shared by the Python layers and the C++ extension.

Both subclass two built-in exceptions so that callers catching either the precise or the
customary type see them: a wrong dtype is a ``TypeError`` (and a ``ValueError``, as NumPy users
often catch); bad ``lengths`` are a ``ValueError`` and an ``IndexError`` (an index out of range).
This module imports nothing from fastrnn: the extension imports it while the package loads.
"""


class DtypeError(TypeError, ValueError):
    """An array has the wrong dtype; the message names the argument, expected and received."""


class LengthsError(ValueError, IndexError):
    """``lengths`` has the wrong shape or dtype, or a value outside ``[1, T]``."""
