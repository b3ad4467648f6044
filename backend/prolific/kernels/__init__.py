"""Triton kernels with their autograd functions (hash grid, MLP, lattice walk, packed compositing, group norm,
LoRA branch, GEGLU). Importing one needs triton; the product imports them only where it runs them (CUDA), after
`triton_available`, and each has a PyTorch twin the tests compare with."""


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # a broken install raises more than ImportError
        return False
    return True
