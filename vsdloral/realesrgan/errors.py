"""The teacher's one error type."""

from __future__ import annotations


class TeacherError(ValueError):
    """A missing or unusable teacher file (or a failed download); the message is one line that
    names the file and the fix."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))  # always one line
