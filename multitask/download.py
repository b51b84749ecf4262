"""Fetches the CS224N "multitask BERT" dataset files that are missing from the data folder.

The files come from the public course repository (gpoesia/minbert-default-final-project) and are
never committed to this project. ``ensure_files`` downloads only what is missing, and checks each
download against ``data/manifest.json`` (size and sha256) before it takes the file's final name:

    paths = ensure_files("data", ["ids-sst-train.csv", "ids-sst-dev.csv"])

A download is written to a temporary file beside its target and renamed into place only once it
is complete and verified, so an interrupted or corrupted download never leaves a file that a later
run would mistake for the real one. Offline, the error says which files are missing and where to
put them; ``--data-dir`` can point at any folder that already has them.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import secrets
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Union

from tqdm import tqdm

from multitask.data import DataError

PathLike = Union[str, Path]

DEFAULT_BASE_URL = (
    "https://raw.githubusercontent.com/gpoesia/minbert-default-final-project/main/data/"
)

# Large enough that per-call overhead is negligible, small enough for a lively progress bar.
_CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class FileInfo:
    """What a published file should look like; None where it is not known."""

    name: str
    bytes: int | None
    sha256: str | None


def default_manifest_path() -> Path:
    """The manifest shipped with the project: ``data/manifest.json`` at the repository root."""
    return Path(__file__).resolve().parents[1] / "data" / "manifest.json"


def load_manifest(path: PathLike | None = None) -> dict[str, FileInfo]:
    """Read a manifest (``{"files": {name: {"bytes": ..., "sha256": ...}}}``) into FileInfo records.

    With no path, the project's own manifest is read; if that is absent (e.g. an installed copy of
    the package without the data folder), downloads go ahead unchecked and each one says so.
    """
    if path is None:
        path = default_manifest_path()
        if not path.is_file():
            _note(f"note: no manifest at {path}; downloads cannot be checked against checksums")
            return {}
    path = Path(path)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["files"]
        return {
            name: FileInfo(name=name, bytes=entry.get("bytes"), sha256=entry.get("sha256"))
            for name, entry in entries.items()
        }
    except FileNotFoundError as error:
        raise DataError(f"{path}: manifest not found.") from error
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise DataError(
            f'{path}: not a valid manifest; expected {{"files": {{name: {{"bytes": ..., '
            f'"sha256": ...}}}}}} ({error!r}).'
        ) from error


def ensure_files(
    data_dir: PathLike,
    names: Iterable[str],
    *,
    base_url: str = DEFAULT_BASE_URL,
    manifest: Mapping[str, FileInfo] | None = None,
    progress: bool = True,
    timeout: float = 30,
) -> dict[str, Path]:
    """Make sure every file in ``names`` is in ``data_dir``, downloading the missing ones.

    Files already present are used as they are (never re-downloaded or re-checked, so a local
    stand-in is respected). Each download is checked against ``manifest`` (default: the project's
    ``data/manifest.json``) where a checksum is known. Returns the path of every requested file.

    Raises DataError when a download does not match its checksum, or when the network fails; the
    latter names every file still missing and says where to put them.
    """
    folder = Path(data_dir)
    if folder.exists() and not folder.is_dir():
        raise DataError(
            f"{folder}: the data folder is a file, not a folder. Point --data-dir at the folder "
            f"that holds (or should receive) the CS224N csv files."
        )
    names = list(names)
    for name in names:
        # The name becomes part of a path and a URL, so it must be a bare file name.
        if not name or name in (".", "..") or Path(name).name != name or "\\" in name:
            raise ValueError(f"not a plain file name: {name!r}")
    paths = {name: folder / name for name in names}
    for name, path in paths.items():
        if path.exists() and not path.is_file():  # a download would fail to write there, or replace it
            raise DataError(
                f"{path}: a folder (or other non-file), not the dataset file {name}. Move it out of "
                f"the way and put the CS224N file in its place, or point --data-dir at a folder that has it."
            )
    missing = [name for name in names if not paths[name].is_file()]
    if not missing:
        return paths

    if manifest is None:
        manifest = load_manifest()
    created = _make_folder(folder)
    if not base_url.endswith("/"):
        base_url += "/"
    try:
        _download_missing(folder, paths, missing, base_url, manifest, progress, timeout)
    except BaseException:
        # A run that got nothing (offline, say) leaves no empty data folder behind to puzzle over.
        for made in created:
            with contextlib.suppress(OSError):
                made.rmdir()  # only succeeds while the folder is empty
        raise
    return paths


def _make_folder(folder: Path) -> list[Path]:
    """Create `folder` and any missing parents; return the folders created, deepest first."""
    created = []
    missing = folder
    while not missing.exists() and missing != missing.parent:
        created.append(missing)
        missing = missing.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(
            f"{folder}: cannot create the data folder ({error.strerror or error}). Point --data-dir "
            f"at a folder you can write to, or at one that already holds the CS224N csv files."
        ) from None
    return created


def _download_missing(folder: Path, paths: dict[str, Path], missing: list[str], base_url: str,
                      manifest: Mapping[str, FileInfo], progress: bool, timeout: float) -> None:
    for position, name in enumerate(missing):
        url = base_url + urllib.parse.quote(name)
        expected = manifest.get(name)
        if expected is None or expected.sha256 is None:
            _note(f"note: no checksum known for {name}; it will be downloaded without a check")
        try:
            _download(url, paths[name], expected, progress=progress, timeout=timeout)
        except _NetworkFailure as failure:
            still_missing = missing[position:]
            raise DataError(
                f"Could not download {name} from {url} ({failure}).\n"
                f"Missing from {folder}: {', '.join(still_missing)}.\n"
                f"Download them from {base_url} or copy them into {folder} by hand, "
                f"or point --data-dir at a folder that already has them."
            ) from failure


class _NetworkFailure(Exception):
    """The transfer itself failed (no connection, HTTP error, timeout, cut-off body)."""


def _download(
    url: str, target: Path, expected: FileInfo | None, *, progress: bool, timeout: float
) -> None:
    """Fetch ``url`` into ``target`` through a temporary file; leave nothing behind on failure."""
    # A random suffix keeps two runs downloading at once from writing into the same temporary
    # file, and "x" mode refuses to clobber one that somehow exists.
    temp_path = target.with_name(f"{target.name}.part-{secrets.token_hex(6)}")
    try:
        out = open(temp_path, "xb")
    except OSError as error:
        raise DataError(
            f"{target.parent}: cannot write {target.name} there ({error.strerror or error}). Point "
            f"--data-dir at a folder you can write to, or copy the files there by hand."
        ) from None
    try:
        with out:
            digest, size = _fetch(url, out, target.name, progress=progress, timeout=timeout)
        if expected is not None:
            _verify(target.name, expected, digest, size)
        os.replace(temp_path, target)
    finally:
        # After a successful os.replace the temporary name no longer exists; otherwise this is
        # the one place that cleans up, whatever went wrong (including Ctrl-C).
        temp_path.unlink(missing_ok=True)


def _fetch(url: str, out, label: str, *, progress: bool, timeout: float) -> tuple[str, int]:
    """Stream ``url`` into the open file ``out``; return its sha256 hex digest and size."""
    digest = hashlib.sha256()
    size = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with tqdm(
                total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024,
                disable=not progress, file=sys.stderr,
            ) as bar:
                while chunk := response.read(_CHUNK_BYTES):
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as error:
        raise _NetworkFailure(f"HTTP {error.code} {error.reason}") from error
    except urllib.error.URLError as error:
        raise _NetworkFailure(str(error.reason)) from error
    except (OSError, http.client.HTTPException) as error:  # timeouts, resets, broken responses
        raise _NetworkFailure(f"{type(error).__name__}: {error}") from error
    # http.client does not complain when a server closes the connection early, so check here.
    if total is not None and size != total:
        raise _NetworkFailure(f"connection closed after {size} of {total} bytes")
    return digest.hexdigest(), size


def _verify(name: str, expected: FileInfo, sha256: str, size: int) -> None:
    """Raise DataError unless the downloaded bytes match the manifest's size and checksum."""
    size_ok = expected.bytes is None or expected.bytes == size
    hash_ok = expected.sha256 is None or expected.sha256.lower() == sha256
    if size_ok and hash_ok:
        return
    raise DataError(
        f"{name}: the download does not match the manifest "
        f"(expected sha256 {expected.sha256}, {expected.bytes} bytes; "
        f"got sha256 {sha256}, {size} bytes). It was discarded. The upstream file may have "
        f"changed or the transfer was corrupted; try again, or put a good copy in the data folder."
    )


def _note(message: str) -> None:
    """Tell the user something without disturbing a progress bar that may be on screen."""
    tqdm.write(message, file=sys.stderr)
