"""The severity scale shared by extraction, routing rules, storage and the API."""

from __future__ import annotations

from enum import IntEnum


class Severity(IntEnum):
    """Most urgent first; values match the ``oncall.v1.Severity`` proto enum."""

    CRITICAL = 1
    HIGH = 2
    MEDIUM = 3
    LOW = 4
    INFO = 5

    @property
    def label(self) -> str:
        """The lowercase name used in JSON and storage (``"critical"``)."""
        return self.name.lower()

    @classmethod
    def parse(cls, value: str) -> Severity | None:
        """Parse a label, ignoring case, surrounding spaces and a ``SEVERITY_`` prefix."""
        text = value.strip().upper().removeprefix("SEVERITY_")
        try:
            return cls[text]
        except KeyError:
            return None

    def at_least(self, minimum: Severity) -> bool:
        """True if this severity is as urgent as ``minimum`` or more."""
        return self.value <= minimum.value


# What an alert gets when no extraction rule finds a severity: loud enough to
# page, because silently downgrading an unlabelled alert can leave people asleep.
DEFAULT_SEVERITY = Severity.HIGH
