"""Refuse to train when a GPU worker's NVIDIA driver cannot run the installed torch build.

Without this check a too-old driver fails deep inside the first CUDA call of a trial, and a
node whose torch sees no GPU would train on the CPU without saying so. `scaling.use_gpu` calls
`require_usable_gpu()` at the start of every Train worker; `python -m harness.gpu_check` runs
the same check by hand on a node.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys

# Minimum Linux driver for each CUDA major version under NVIDIA's minor-version compatibility
# (CUDA Compatibility guide, docs.nvidia.com/deploy/cuda-compatibility/, table "CUDA Toolkit
# and Minimum Required Driver Version for CUDA Minor Version Compatibility"): a torch wheel
# built with any CUDA 12.x runs on a >= 525.60.13 driver, one built with CUDA 13.x on >= 580.65.06.
MIN_DRIVER_FOR_CUDA_MAJOR: dict[int, str] = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}


class GPUStackError(RuntimeError):
    """This node cannot train on its GPU: the message names driver, CUDA and torch versions."""


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.strip().split(".") if part.isdigit())


def gpu_stack_problem(driver: str | None, torch_cuda: str | None, torch_version: str,
                      cuda_available: bool) -> str | None:
    """Why this node cannot train on its GPU (one line), or None when it can.

    `driver` is the NVIDIA driver version (None: no driver found), `torch_cuda` is
    `torch.version.cuda` (None: a CPU-only torch build), `cuda_available` is
    `torch.cuda.is_available()`.
    """
    if torch_cuda is None:
        return (f"scaling.use_gpu is true but torch {torch_version} is a CPU-only build "
                f"(torch.version.cuda is None; NVIDIA driver {driver or 'not found'}): install the "
                f"CUDA build named in cluster/Dockerfile")
    if driver is None:
        return (f"scaling.use_gpu is true but this node has no NVIDIA driver (nvidia-smi / NVML "
                f"not found); torch {torch_version} is built for CUDA {torch_cuda}")
    major = _version_tuple(torch_cuda)[0]
    needed = MIN_DRIVER_FOR_CUDA_MAJOR.get(major)
    if needed is not None and _version_tuple(driver) < _version_tuple(needed):
        return (f"NVIDIA driver {driver} cannot run torch {torch_version} built for CUDA "
                f"{torch_cuda}: CUDA {major}.x needs driver >= {needed} (update the "
                f"node image's driver or use a torch build for an older CUDA)")
    if not cuda_available:
        return (f"scaling.use_gpu is true but torch {torch_version} (CUDA {torch_cuda}) sees no "
                f"usable GPU with NVIDIA driver {driver} (torch.cuda.is_available() is False)")
    return None


def read_driver_version() -> str | None:
    """The NVIDIA driver version from NVML (nvidia-ml-py) or nvidia-smi; None when neither works."""
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # noqa: BLE001 - no NVML (module or library) falls back to nvidia-smi
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.stdout.strip().splitlines()
    return lines[0].strip() if out.returncode == 0 and lines else None


def require_usable_gpu() -> None:
    """Raise GPUStackError unless this process can train on an NVIDIA GPU with the installed torch."""
    import torch

    problem = gpu_stack_problem(read_driver_version(), torch.version.cuda, torch.__version__,
                                torch.cuda.is_available())
    if problem is not None:
        raise GPUStackError(problem)


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="python -m harness.gpu_check",
        description="Check that this node can train on its GPU: the NVIDIA driver runs the installed torch "
                    "build and torch sees a GPU. Prints one line; exit 0 when it can, 1 (the reason on "
                    "stderr) when it cannot.").parse_args(argv)
    try:
        require_usable_gpu()
    except GPUStackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    import torch

    print(f"ok: NVIDIA driver {read_driver_version()}, torch {torch.__version__} "
          f"(CUDA {torch.version.cuda}), {torch.cuda.device_count()} GPU(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
