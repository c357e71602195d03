"""GPU honesty: a GPU torch cannot use is an error that names the driver and the CUDA torch needs.

This machine has no GPU; an `nvidia-smi` script on PATH stands in for a host whose driver is too old.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from ml_backend import gpu
from ml_backend.gpu import GpuFacts, cuda_problem
from ml_backend.models.base import resolve_device

OLD_DRIVER = "535.183.01"


def facts(**overrides: object) -> GpuFacts:
    values: dict = {
        "nvidia_device": True,
        "driver_version": OLD_DRIVER,
        "torch_version": "2.14.1",
        "torch_cuda": "13.0",
        "cuda_available": False,
    }
    return GpuFacts(**{**values, **overrides})


@pytest.fixture
def old_driver_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "nvidia-smi"
    script.write_text(f"#!/bin/sh\necho {OLD_DRIVER}\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")


def test_problem_names_the_driver_and_the_cuda_torch_needs() -> None:
    problem = cuda_problem("auto", facts())
    assert problem is not None
    assert OLD_DRIVER in problem and "CUDA 13.0" in problem and "2.14.1" in problem
    assert problem.startswith("DEVICE=auto:")


def test_no_problem_when_cuda_works_or_cpu_is_asked() -> None:
    assert cuda_problem("auto", facts(cuda_available=True)) is None
    assert cuda_problem("cuda", facts(cuda_available=True)) is None
    assert cuda_problem("cpu", facts()) is None


def test_auto_on_a_machine_without_nvidia_is_a_cpu_machine() -> None:
    assert cuda_problem("auto", facts(nvidia_device=False, driver_version=None)) is None


def test_cuda_without_any_gpu_is_a_problem_that_says_so() -> None:
    problem = cuda_problem("cuda", facts(nvidia_device=False, driver_version=None))
    assert problem is not None and "no NVIDIA device" in problem and "nvidia-smi did not run" in problem


def test_cpu_only_torch_is_named() -> None:
    problem = cuda_problem("cuda", facts(torch_cuda=None))
    assert problem is not None and "CPU-only build" in problem


def test_driver_version_read_from_nvidia_smi(old_driver_host: None) -> None:
    assert gpu.nvidia_driver_version() == OLD_DRIVER
    assert gpu.gather_facts().nvidia_device


def test_driver_version_is_none_without_nvidia_smi(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert gpu.nvidia_driver_version() is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where torch has no GPU")
def test_device_cuda_fails_with_the_versions(old_driver_host: None) -> None:
    with pytest.raises(RuntimeError) as raised:
        resolve_device("cuda")
    assert OLD_DRIVER in str(raised.value)
    assert f"CUDA {torch.version.cuda}" in str(raised.value) or "CPU-only build" in str(raised.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where torch has no GPU")
def test_device_auto_on_an_unusable_gpu_logs_an_error_and_runs_on_cpu(
    old_driver_host: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="ml_backend.models.base"):
        assert resolve_device("auto") == torch.device("cpu")
    [record] = caplog.records
    assert record.levelno == logging.ERROR and OLD_DRIVER in record.getMessage()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where torch has no GPU")
def test_device_auto_without_nvidia_is_quiet(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(gpu, "NVIDIA_DEVICE_NODE", tmp_path / "nvidia0")
    with caplog.at_level(logging.ERROR, logger="ml_backend.models.base"):
        assert resolve_device("auto") == torch.device("cpu")
    assert caplog.records == []
