"""`python -m prolific ...` is the `prolific` command."""
import sys

from .cli import main

sys.exit(main())
