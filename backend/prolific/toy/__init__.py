"""The toy world and the bundled toy prior trained on it (see prior/bundled.py)."""
