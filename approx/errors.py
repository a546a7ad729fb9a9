"""User-facing errors of the approximation package (bad domain, unreachable bound, bad coefficient file)."""


class ApproxError(ValueError):
    """A clear failure caused by input; the message names the bad value or field."""
