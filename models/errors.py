"""User-facing errors of the plaintext model package (bad checkpoint, bad config, bad data)."""


class ModelError(Exception):
    """A clear failure caused by input: a missing, corrupt or mismatched file, an invalid config."""
