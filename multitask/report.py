"""Reporting training numbers to a dashboard while a run trains (`--report-to`).

    reporter = make_reporter("tensorboard", out_dir)   # or None: reports nothing
    reporter.scalars(step, {"sst": 1.52, "qqp": 0.61}, prefix="train/loss")
    reporter.close()

"tensorboard" writes event files into OUT_DIR/tensorboard through PyTorch's SummaryWriter; watch
them with `tensorboard --logdir OUT_DIR/tensorboard`. It needs the optional tensorboard package:
`pip install -e '.[tensorboard]'`.
"""

from __future__ import annotations

from pathlib import Path

from multitask.runtime import RuntimeSetupError

REPORT_KINDS = ("tensorboard",)
INSTALL_HINT = "pip install -e '.[tensorboard]'"


class ReporterUnavailable(RuntimeSetupError):
    """The chosen reporter's package is not installed; the message says how to install it."""


class NoReporter:
    """Reports nothing (no --report-to)."""

    def scalars(self, step: int, values: dict[str, float], prefix: str) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardReporter:
    """Scalars into TensorBoard event files: `prefix/name` at `step`, one tag per value."""

    def __init__(self, folder: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch imports the tensorboard package there
            raise ReporterUnavailable(f"--report-to tensorboard needs the tensorboard package, which "
                                      f"is not installed: {INSTALL_HINT}") from None
        self.folder = Path(folder)
        self.writer = SummaryWriter(log_dir=str(self.folder))

    def scalars(self, step: int, values: dict[str, float], prefix: str) -> None:
        for name, value in values.items():
            if value is not None:  # e.g. the loss of a task the epoch did not draw
                self.writer.add_scalar(f"{prefix}/{name}" if prefix else name, float(value), step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


def make_reporter(kind: str | None, out_dir: Path):
    """The reporter for `--report-to KIND`: None reports nothing; "tensorboard" writes into
    out_dir/tensorboard (ReporterUnavailable without the package)."""
    if kind is None:
        return NoReporter()
    if kind == "tensorboard":
        return TensorBoardReporter(Path(out_dir) / "tensorboard")
    raise ValueError(f"unknown reporter {kind!r}; choose one of {', '.join(REPORT_KINDS)}")
