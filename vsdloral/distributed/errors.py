"""The chunked mode's error type."""


class DistributedError(Exception):
    """A chunked render that cannot go on, in one line a user can act on (the command prints it)."""
