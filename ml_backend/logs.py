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


# Job data that must never reach a log line: RLE mask counts (COCO RLE strings never hold a quote) and
# base64 (images, encoded arrays), whichever part of a job's input or output a message quotes.
_RLE_COUNTS = re.compile(r"""(['"]counts['"]\s*:\s*)(['"])[^'"]*\2""")
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{64,}={0,2}")
_RUNPOD_LEVELS = {"WARNING": "WARN"}  # the SDK's name for it


def redact(text: str) -> str:
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(r"\1[redacted]", text)
    return text


def without_job_data(text: str) -> str:
    """The text with mask counts and base64 runs replaced by placeholders; the structure around stays."""
    text = _RLE_COUNTS.sub(r"\1'[mask omitted]'", text)
    return _BASE64_RUN.sub("[base64 omitted]", text)


class RedactingFilter(logging.Filter):
    """Last line of defence: code never logs credentials, and this masks any that slip into a message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = without_job_data(redact(message))
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


def configure_runpod_logging(level: str) -> None:
    """The RunPod SDK prints through its own logger: make it follow LOG_LEVEL and keep job data out.

    The SDK defaults to DEBUG, where it prints every job's whole output (`run_job return: {...}`), and
    even at INFO the `--test_input` mode prints the result. Its logger has no filter hook, so its
    `log` method is wrapped (once) to pass each message through the same redaction as ours.
    """
    from runpod.serverless.modules.rp_logger import RunPodLogger

    RunPodLogger().level = _RUNPOD_LEVELS.get(level, level)
    if getattr(RunPodLogger.log, "keeps_job_data_out", False):
        return
    sdk_log = RunPodLogger.log

    def log(
        self: RunPodLogger, message: object, message_level: str = "INFO", job_id: str | None = None
    ) -> None:
        sdk_log(self, without_job_data(redact(str(message))), message_level, job_id)

    log.keeps_job_data_out = True  # type: ignore[attr-defined]
    RunPodLogger.log = log  # type: ignore[method-assign]
