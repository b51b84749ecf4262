"""Files: the error a bad checkpoint file raises, and writes that a crash cannot leave half done.

Both serve the model package (reading and writing checkpoints) and the trainer (training
checkpoints, metrics, run folders), so they live here, below both.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

# Terminal escape sequences (colours, bold) that some libraries put into their error text; a
# message that quotes such text is printed to files and pipes too, where they are debris.
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def strip_ansi(text: str) -> str:
    """`text` without terminal escape sequences such as "\x1b[1m" (bold) and "\x1b[0m"."""
    return _ANSI_ESCAPE.sub("", text)


class CheckpointError(Exception):
    """A checkpoint or its files cannot be used; the message names the file and what to do.

    The message is kept free of terminal escape sequences, whatever text it quotes.
    """

    def __init__(self, message: object = "") -> None:
        super().__init__(strip_ansi(str(message)))


def atomic_write(path: Path, write) -> None:
    """Call write(temp_path) then rename onto `path`, so a crash never leaves half a file.

    The temporary file is PATH.<random>.tmp beside `path` (a rename is atomic only within one
    filesystem); a process killed mid-write leaves it behind, never a damaged `path`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(temp)
        with open(temp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
