"""Files: the error a bad checkpoint file raises, writes that a crash cannot leave half done
and a full disk reports by name, and reads of a run's JSON records that name a damaged file.

Both serve the model package (reading and writing checkpoints) and the trainer (training
checkpoints, metrics, run folders), so they live here, below both.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
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


class WriteError(CheckpointError):
    """A file could not be written (a full disk, a folder without write permission); the message
    names the file and the reason. Whatever the file would have replaced is left as it was."""


# Less than this free after a failed write means the write failed because the disk is full
# (the failed write itself used up what was left, so a full disk reads as 0 or nearly).
_FULL_BELOW_BYTES = 1 << 20


def _why_write_failed(error: Exception, folder: Path) -> str | None:
    """The reason a write into `folder` failed, in words, or None if `error` is not about the
    file system (a bug in the caller, which must surface as it is).

    torch.save reports a full disk only as "unexpected pos ..." and safetensors as its own error
    type, so the free space decides as well as the error number.
    """
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    number = getattr(error, "errno", None)  # the file system's own reason, where it gave one
    quota = number == errno.EDQUOT
    full = quota or number == errno.ENOSPC or "no space left on device" in str(error).lower()
    # Without a reason (torch.save), little free space says the disk filled; with one, the reason
    # stands even where little is free (a folder in /proc has none, and writes there are refused).
    full = full or (number is None and free is not None and free < _FULL_BELOW_BYTES)
    if full:
        if quota:
            detail = "the disk quota is used up"
        else:
            detail = f"{free / 2**20:.1f} MiB free on its disk" if free is not None else "its disk is full"
        return f"no space left in {folder} ({detail}); free some space or write elsewhere"
    if isinstance(error, OSError):
        return strip_ansi(error.strerror or str(error))
    return None


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


_NEW_FILE_MODE = 0o666 & ~_umask()  # the permissions open() gives a new file in this process


def atomic_write(path: Path, write) -> None:
    """Call write(temp_path) then rename onto `path`, so a crash never leaves half a file.

    The temporary file is PATH.<random>.tmp beside `path` (a rename is atomic only within one
    filesystem); a process killed mid-write leaves it behind, never a damaged `path`. A write
    that fails for want of space or permission raises WriteError naming `path`.
    """
    path = Path(path)
    temp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        os.close(handle)
        write(temp)
        with open(temp, "rb") as written:
            os.fsync(written.fileno())
        os.chmod(temp, _NEW_FILE_MODE)  # mkstemp's file is private (0600); a plain open's is not
        os.replace(temp, path)
    except Exception as error:
        reason = _why_write_failed(error, path.parent)  # measured while the partial file still fills the disk
        _remove(temp)
        if reason is None:
            raise
        raise WriteError(f"cannot write {path}: {reason}") from error
    except BaseException:  # an interrupt: the process is going, and so does the partial file
        _remove(temp)
        raise


def _remove(temp: str | None) -> None:
    if temp is not None:
        Path(temp).unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    """Write a UTF-8 text file through atomic_write."""
    atomic_write(path, lambda temp: Path(temp).write_text(text, encoding="utf-8"))


# A run's JSON records, read by the tools that summarise runs (tables, plots, analyses)

DAMAGED_HINT = ("the file is damaged or was not written by a training run; train the run again or move "
                "the file away")


def read_json_object(path: Path, what: str) -> dict:
    """The object a JSON file holds (train_config.json: `what` "a run's settings"; final_metrics.json:
    "a run's scores"). CheckpointError naming the file where it cannot be read as JSON or holds
    something other than an object."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not readable as JSON ({err}); {DAMAGED_HINT}") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: not {what} (a JSON object); {DAMAGED_HINT}")
    return value


def read_json_records(path: Path) -> list[dict]:
    """The records of a JSON-lines file (metrics.jsonl: one object a line, an epoch a line), blank
    lines skipped. CheckpointError naming the file and line where a line is not a JSON object."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not readable ({err}); {DAMAGED_HINT}") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{path}, line {number}: not JSON ({err.msg}); {DAMAGED_HINT}") from None
        if not isinstance(record, dict):
            raise CheckpointError(f"{path}, line {number}: not a record (a JSON object); {DAMAGED_HINT}")
        records.append(record)
    return records
