"""User-facing errors of the encrypted runtime.

Anything raised as `HeAeroError` is bad input or a refused configuration: the CLI prints its message on one
line and exits non-zero instead of showing a traceback.
"""


class HeAeroError(Exception):
    """A clear, user-facing failure (bad input, mismatched artifact, refused parameters)."""
