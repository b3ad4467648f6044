"""ProlificDreamer backend: text-to-3D with Variational Score Distillation."""
__version__ = "0.1.0"
