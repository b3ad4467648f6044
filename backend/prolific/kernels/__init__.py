"""Triton kernels with their autograd functions (hash grid, packed compositing). Importing one needs triton;
the product imports them only where it runs them (CUDA), and each has a PyTorch twin the tests compare with."""
