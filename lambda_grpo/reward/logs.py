"""Log lines about a response quote at most a short prefix of it.

math-verify logs, at WARNING, "Timeout during parsing: <the whole response>" (math_verify/parser.py, `parse`),
which for a long response is one line of thousands of characters on the console of every reward worker.
`shorten_long_log_messages` attaches `ShortenLongMessages` to math-verify's and latex2sympy2_extended's loggers:
a message longer than `MAX_MESSAGE_CHARS` keeps its first `MAX_MESSAGE_CHARS` characters and says how many
were left out. Nothing else about the record changes (logger, level, handlers).
"""

from __future__ import annotations

import logging

MAX_MESSAGE_CHARS = 200
"""Longest message a shortened logger emits (the prefix kept, before the "… [N more characters]" note)."""

VERIFIER_LOGGERS = ("math_verify", "latex2sympy2_extended")
"""Logger name prefixes of the verifier's packages."""


class ShortenLongMessages(logging.Filter):
    """Cut a record's message to `MAX_MESSAGE_CHARS` characters plus a note of the length left out."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if len(message) > MAX_MESSAGE_CHARS:
            record.msg = f"{message[:MAX_MESSAGE_CHARS]}… [{len(message) - MAX_MESSAGE_CHARS} more characters]"
            record.args = None
        return True


def shorten_long_log_messages() -> None:
    """Attach `ShortenLongMessages` to every logger of math-verify and latex2sympy2_extended (imported here, so
    that their module loggers exist). Idempotent."""
    import latex2sympy2_extended.latex2sympy2  # noqa: F401
    import math_verify  # noqa: F401

    names = [name for name in logging.root.manager.loggerDict if name.split(".")[0] in VERIFIER_LOGGERS]
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, ShortenLongMessages) for existing in logger.filters):
            logger.addFilter(ShortenLongMessages())
