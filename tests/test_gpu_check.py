"""harness/gpu_check.py: which driver / torch-build pairs a GPU worker refuses, with what line.

The pure check is fed the inputs a worker would read (driver version, torch.version.cuda,
torch version, torch.cuda.is_available()); the reading itself runs for real on this machine,
which has no NVIDIA driver, so a `use_gpu` worker here must refuse to start.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.gpu_check import GPUStackError, gpu_stack_problem, read_driver_version, require_usable_gpu

REPO = Path(__file__).resolve().parents[1]

# (driver, torch.version.cuda, cuda available) -> refused?
CASES = [
    ("580.65.06", "13.0", True, False),   # exactly NVIDIA's CUDA 13.x minimum
    ("580.65.05", "13.0", True, True),    # one patch below it
    ("550.90.07", "13.0", True, True),    # GCP's common-cu124 image with a CUDA 13 torch
    ("570.133.20", "12.8", True, False),  # CUDA 12.x runs on any >= 525.60.13
    ("525.60.13", "12.8", True, False),
    ("525.60.12", "12.6", True, True),
    ("470.256.02", "12.1", True, True),
    ("470.256.02", "11.8", True, False),  # CUDA 11.x needs only >= 450.80.02
    ("590.10", "13.1", False, True),      # driver fine, but torch sees no GPU: never a CPU run
]


@pytest.mark.parametrize("driver,cuda,available,refused", CASES)
def test_driver_and_torch_build_pairs(driver, cuda, available, refused):
    problem = gpu_stack_problem(driver, cuda, "2.14.1", available)
    assert (problem is not None) == refused, problem
    if refused:
        assert "\n" not in problem
        for part in (driver, cuda, "2.14.1"):
            assert part in problem, f"{part!r} missing from: {problem}"


def test_too_old_driver_names_the_minimum():
    problem = gpu_stack_problem("550.90.07", "13.0", "2.14.1+cu130", True)
    assert "CUDA 13.x needs driver >= 580.65.06" in problem, problem


def test_cpu_only_torch_and_missing_driver_are_refused():
    cpu_build = gpu_stack_problem("580.65.06", None, "2.14.1+cpu", False)
    assert cpu_build and "CPU-only" in cpu_build and "2.14.1+cpu" in cpu_build
    no_driver = gpu_stack_problem(None, "13.0", "2.14.1", False)
    assert no_driver and "no NVIDIA driver" in no_driver and "13.0" in no_driver


def test_this_machine_has_no_driver_so_a_gpu_worker_refuses():
    """Real reading, no simulation: no NVML module and no nvidia-smi here."""
    if read_driver_version() is not None or torch.cuda.is_available():
        pytest.skip("this machine has an NVIDIA GPU; the refusal is covered by the pure cases")
    with pytest.raises(GPUStackError) as refused:
        require_usable_gpu()
    assert torch.__version__ in str(refused.value)
    cli = subprocess.run([sys.executable, "-m", "harness.gpu_check"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 1 and cli.stderr.count("\n") == 1, cli.stderr
    assert cli.stderr.startswith("error: ") and torch.__version__ in cli.stderr
