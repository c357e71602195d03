"""Logging set-up shared by every entry point, with a filter that keeps secrets out of logs."""

from __future__ import annotations

import logging
import re

_SECRET_PATTERNS = [
    re.compile(r"(Authorization:?\s*['\"]?\s*(?:Token|Bearer|Basic)\s+)[^\s'\"]+", re.IGNORECASE),
    re.compile(
        r"((?:api[_-]?key|token|access_token|refresh|password)['\"]?\s*[:=]\s*['\"]?)[^\s'\",}]+",
        re.IGNORECASE,
    ),
]


def redact(text: str) -> str:
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(r"\1[redacted]", text)
    return text


class RedactingFilter(logging.Filter):
    """Last line of defence: code never logs credentials, and this masks any that slip into a message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("urllib3", "PIL", "httpx", "filelock"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
