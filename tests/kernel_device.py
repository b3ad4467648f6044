"""Where tests/kernel_cases*.py run the Triton kernels: interpreted on CPU tensors under TRITON_INTERPRET=1, else
compiled on the GPU; a case file without either is skipped whole."""
import os

import pytest
import torch

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRETED else "cuda"


def require_kernels() -> None:
    """Skip the calling case file (at import) unless triton can run its kernels here."""
    pytest.importorskip("triton")
    if not INTERPRETED and not torch.cuda.is_available():
        pytest.skip("compiled Triton kernels need a CUDA device (set TRITON_INTERPRET=1 for the CPU)",
                    allow_module_level=True)
