"""The tools' names on their usage lines: `multibert-export` when run as the installed command
(setup.py's entry points), `python -m multitask.export` otherwise."""

from __future__ import annotations

import os
import sys


def program_name(module: str) -> str:
    """The name `--help` and usage errors show for the tool in `module` (e.g. multitask.export)."""
    invoked = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if invoked.startswith("multibert-"):
        return invoked
    return f"python -m {module}"
