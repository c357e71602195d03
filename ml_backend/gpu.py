"""Why torch sees no GPU on a machine that has one.

The usual cause is a driver older than the CUDA release torch was built for (torch 2.14.1 from PyPI
is built for CUDA 13.0, which needs an NVIDIA driver >= 580). `cuda_problem` names both versions so
a GPU worker that would otherwise run on the CPU without a word says why at start.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

NVIDIA_DEVICE_NODE = Path("/dev/nvidia0")


@dataclass(frozen=True)
class GpuFacts:
    nvidia_device: bool  # the host has an NVIDIA GPU (device node or a working nvidia-smi)
    driver_version: str | None  # from nvidia-smi, when it runs
    torch_version: str
    torch_cuda: str | None  # the CUDA version torch was built for; None for a CPU-only build
    cuda_available: bool


def nvidia_driver_version(timeout_s: float = 10.0) -> str | None:
    """The driver version nvidia-smi reports, or None when it is missing or fails."""
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return None
    try:
        result = subprocess.run(
            [binary, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = result.stdout.strip().splitlines()
    return lines[0].strip() if result.returncode == 0 and lines else None


def gather_facts() -> GpuFacts:
    import torch

    driver = nvidia_driver_version()
    return GpuFacts(
        nvidia_device=NVIDIA_DEVICE_NODE.exists() or driver is not None,
        driver_version=driver,
        torch_version=torch.__version__,
        torch_cuda=torch.version.cuda,
        cuda_available=torch.cuda.is_available(),
    )


def describe_unusable_cuda(facts: GpuFacts) -> str:
    driver = facts.driver_version or "unknown (nvidia-smi did not run)"
    if facts.torch_cuda is None:
        need = f"torch {facts.torch_version} is a CPU-only build"
    else:
        need = (
            f"torch {facts.torch_version} needs CUDA {facts.torch_cuda} (an NVIDIA driver that supports it)"
        )
    hardware = "an NVIDIA device is present" if facts.nvidia_device else "no NVIDIA device was found"
    return (
        f"CUDA is not usable: {hardware}, NVIDIA driver {driver}; {need}. Use a host with a newer driver "
        "(RunPod: restrict the endpoint's allowed CUDA versions) or build the image with TORCH_INDEX_URL "
        "for an older CUDA"
    )


def cuda_problem(setting: str, facts: GpuFacts) -> str | None:
    """The error to report when DEVICE wants a GPU torch cannot use; None when all is as expected.

    DEVICE=auto on a machine without an NVIDIA device is a CPU machine, not a problem.
    """
    if setting == "cpu" or facts.cuda_available:
        return None
    if setting == "auto" and not facts.nvidia_device:
        return None
    return f"DEVICE={setting}: {describe_unusable_cuda(facts)}"
