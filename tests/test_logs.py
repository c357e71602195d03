"""No log line carries a secret, a mask, an image or base64: our loggers and the RunPod SDK's."""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ml_backend import worker
from ml_backend.logs import RedactingFilter, without_job_data
from tests.support import make_image

ROOT = Path(__file__).resolve().parents[1]
IMAGE_BASE64 = base64.b64encode(make_image(64, 48)).decode()
UNREDACTED_COUNTS = re.compile(r"""['"]counts['"]\s*:\s*['"](?!\[mask omitted\])""")


def test_mask_counts_and_base64_are_replaced_and_the_rest_stays() -> None:
    message = (
        "run_job return: {'output': {'masks': [{'mask': {'size': [48, 64], 'counts': 'PPa0:5d0;<\\\\>'}}]}}"
    )
    cleaned = without_job_data(message)
    assert (
        cleaned
        == "run_job return: {'output': {'masks': [{'mask': {'size': [48, 64], 'counts': '[mask omitted]'}}]}}"
    )
    as_json = without_job_data(json.dumps({"image_base64": IMAGE_BASE64, "counts": "abc"}))
    assert IMAGE_BASE64[:64] not in as_json and "[base64 omitted]" in as_json
    assert "\"counts\": '[mask omitted]'" in as_json


def test_short_words_and_urls_are_left_alone() -> None:
    text = "job abc-123 rejected: image_url: download failed with HTTP 404 (https://example.com/a/b.jpg)"
    assert without_job_data(text) == text


def test_filter_cleans_our_records() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "got %s", (IMAGE_BASE64,), None)
    RedactingFilter().filter(record)
    assert IMAGE_BASE64[:64] not in record.getMessage()


def counts_in(output: dict) -> list[str]:
    return [mask["mask"]["counts"] for mask in output.get("masks", [])]


def run_worker_once(job_input: dict, log_level: str) -> subprocess.CompletedProcess:
    """The worker through the RunPod SDK's `--test_input`: one job, then exit."""
    env = {**os.environ, "DEVICE": "cpu", "LOG_LEVEL": log_level, "PYTHONUNBUFFERED": "1"}
    env.pop("RUNPOD_LOG_LEVEL", None)
    return subprocess.run(
        [sys.executable, "-m", "ml_backend.worker", "--test_input", json.dumps({"input": job_input})],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_worker_through_the_sdk_at_debug_logs_no_job_data(tiny_hf_cache: Path) -> None:
    """`--test_input` runs the handler through the SDK, which at DEBUG prints `run_job return: {...}`
    and at INFO `Job result: {...}`: the log must show the result's shape without its masks or images."""
    job_input = {"task": "segment", "model": "sam2", "image_base64": IMAGE_BASE64, "point": [0.5, 0.5]}
    expected = worker.handler({"id": "in-process", "input": job_input})
    assert counts_in(expected), expected
    result = run_worker_once(job_input, "DEBUG")
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "run_job return:" in log and "'counts': '[mask omitted]'" in log  # DEBUG reached the SDK
    assert "OD annotation worker on device cpu, dtype float32" in log
    assert not UNREDACTED_COUNTS.search(log)
    assert all(counts not in log for counts in counts_in(expected) if len(counts) >= 8)
    assert IMAGE_BASE64[:64] not in log


@pytest.mark.slow
def test_sdk_follows_log_level(tiny_hf_cache: Path) -> None:
    job_input = {"task": "segment", "model": "sam2", "image_base64": IMAGE_BASE64, "point": [0.5, 0.5]}
    result = run_worker_once(job_input, "WARNING")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "DEBUG  |" not in result.stdout and "INFO   |" not in result.stdout
