"""The Triton kernels (kernels/) against their PyTorch twins: tests/kernel_cases*.py in a subprocess, under
Triton's interpreter on the CPU wherever triton is installed, and compiled on the GPU where there is one.

A subprocess because TRITON_INTERPRET is read when a kernel is decorated (at import): setting it in this process
would leave every later import of the kernels interpreted. On a CUDA machine this one command checks both."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
CASES = ["kernel_cases.py", "kernel_cases_mlp.py", "kernel_cases_norm.py", "kernel_cases_lora.py",
         "kernel_cases_geglu.py"]


def _run_cases(interpret: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfs", "--tb=short",
                           *(str(HERE / name) for name in CASES)], cwd=HERE.parent, env=env, capture_output=True,
                          text=True, timeout=900)


def _old_interpreter() -> bool:
    """Triton's interpreter before 3.9 (the GPU machine has 3.6) keeps a scalar as a 1-element array, which the
    kernels' loops over loaded bounds cannot take under NumPy 2 ('only 0-dimensional arrays can be converted');
    the compiled kernels are unaffected and are tested there."""
    import triton

    return tuple(int(p) for p in triton.__version__.split(".")[:2]) < (3, 9)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed (Linux x86_64 only)")
def test_kernels_match_their_twins_under_the_interpreter():
    if _old_interpreter():
        pytest.skip("Triton's interpreter before 3.9 rejects the kernels' loop bounds under NumPy 2")
    proc = _run_cases(interpret=True)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("triton") is None,
                    reason="needs a CUDA device and triton")
def test_kernels_match_their_twins_compiled_on_the_gpu():
    proc = _run_cases(interpret=False)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout
