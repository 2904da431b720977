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


# The words a sender's ``severity`` field may hold, for the generic webhook (the one table: the code
# reads it and docs/alert-routing.md lists it, a test checks they agree). Our five labels; PagerDuty's
# critical/error/warning/info; Zabbix's Disaster/High/Average/Warning/Information/Not classified;
# syslog's emerg/alert/crit/err/warning/notice/info/debug; P1-P5 and SEV1-SEV5 (1 most urgent, as the
# spec's ``priority``). A bare number is not here: Zabbix counts up (5 = Disaster), syslog and SEV
# count down, so a number alone cannot be read safely and falls through to the next rule.
SEVERITY_WORDS: dict[str, Severity] = {
    **dict.fromkeys(
        (
            "critical",
            "crit",
            "fatal",
            "emergency",
            "emerg",
            "alert",
            "disaster",
            "page",
            "p1",
            "sev1",
        ),
        Severity.CRITICAL,
    ),
    **dict.fromkeys(("high", "error", "err", "major", "p2", "sev2"), Severity.HIGH),
    **dict.fromkeys(("medium", "warning", "warn", "average", "moderate", "p3", "sev3"), Severity.MEDIUM),
    **dict.fromkeys(("low", "minor", "notice", "p4", "sev4"), Severity.LOW),
    **dict.fromkeys(
        ("info", "informational", "information", "not classified", "ok", "debug", "p5", "sev5"),
        Severity.INFO,
    ),
}


def squash_word(value: str) -> str:
    """A word as the vocabulary compares it: lowercase, without spaces, ``-`` and ``_``
    (``" Not_Classified "``, ``"SEV-1"`` and ``"sev 1"`` are ``notclassified`` and ``sev1``)."""
    return "".join(value.lower().replace("-", " ").replace("_", " ").split())


_SQUASHED_WORDS = {squash_word(word): severity for word, severity in SEVERITY_WORDS.items()}


def severity_from_word(value: str) -> Severity | None:
    """The vocabulary's severity for a sender's word (a ``SEVERITY_`` prefix allowed, as in
    :meth:`Severity.parse`); ``None`` for a word it does not hold, so the caller falls through."""
    text = squash_word(value)
    return _SQUASHED_WORDS.get(text) or _SQUASHED_WORDS.get(text.removeprefix("severity"))
