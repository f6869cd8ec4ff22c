"""Exceptions of the model layer, importable without loading torch or diffusers."""


class WeightsError(ValueError):
    """A weights file is missing, unreadable, from another model, or inconsistent."""
