"""Does where a random plan put a task's batches explain a run's scores? (issue 15)

The annealed sampler draws each batch's task independently, so by chance alone a task gets a run
of batches and then none for a while. `--spread-tasks` keeps each task's number of batches and
spaces them evenly; the reading offered for its small gain was that a task loses ground while it
goes long without a batch. This tool tests such readings on runs already made. For every seed two
rows of an ablation share, it takes the plan the sampler drew for that seed (before
--spread-tasks) and measures, per task, how it placed the task's n of the epoch's N batches:

    longest gap   the most steps in a row without a batch of the task
    mean offset   the mean distance, in steps, of its k-th batch from where an even spread puts
                  it, (k + 1/2) N / n (what --spread-tasks removes)
    lateness      the mean place of its batches as a share of the epoch, minus 1/2 (> 0: late)
    lr share      the learning rate summed over its steps, over n / N of the sum over all steps
                  (1: its share of the schedule; < 1: its batches fell where the rate is low;
                  the run's one schedule over all steps: --task-schedules, which gives each task
                  its own, is not modelled)

and gives Pearson's r between each measure and the difference of the two rows' dev scores (ROW
minus BASELINE, seed by seed), with a two-sided p from a seeded permutation test (the seeds are
few and the measures not normal). If clumps cost a task, a spread row's gain over the plain row
grows with them, and a plain multitask row's difference from single-task shrinks with them.
"pooled" correlates all tasks at once, each task's differences and measures standardised first,
so that the tasks' different scales and means do not make a correlation of their own.

    python -m multitask.placement docs/ablation-unseen-seeds multi-tuned-concat-spread multi-tuned-concat \\
        --data-dir data
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from bert.files import CheckpointError, read_json_object
from multitask.ablation import baseline_columns, seed_dirs, seed_scores, train_sizes
from multitask.commands import program_name
from multitask.config import TASKS, TrainConfig
from multitask.data import DataError
from multitask.samplers import epoch_plan
from multitask.training import scheduled_lr

MEASURES = {"longest gap": "{:.0f}", "mean offset": "{:.1f}", "lateness": "{:+.3f}", "lr share": "{:.3f}"}  # -> format
METRIC = {"sst": "sst_acc", "qqp": "qqp_acc", "sts": "sts_corr"}


def placement(plan: list[str], task: str, lr: np.ndarray) -> dict[str, float] | None:
    """The four measures of how `plan` (one task name per step) placed `task`'s batches; `lr` (N,)
    is the learning rate of each step. None where the plan gave the task no batch: there is no
    placement to measure (a short plan can leave a small task out)."""
    N = len(plan)
    places = np.array([p for p, t in enumerate(plan) if t == task])  # (n,) 0-based steps
    n = len(places)
    if n == 0:
        return None
    due = (np.arange(n) + 0.5) * N / n  # (n,) where an even spread puts the k-th batch's middle
    gaps = np.diff(np.concatenate([[-1], places, [N]])) - 1  # (n + 1,) steps without it, edges included
    return {"longest gap": float(gaps.max()),
            "mean offset": float(np.abs(places + 0.5 - due).mean()),
            "lateness": float((places + 0.5).mean() / N - 0.5),
            "lr share": float(lr[places].sum() / (lr.sum() * n / N))}


def permutation_r(x: np.ndarray, y: np.ndarray, rounds: int = 10000, seed: int = 0) -> tuple[float, float]:
    """Pearson's r of x and y (n,), and the share of `rounds` random pairings (y shuffled) whose
    |r| is at least as large: the two-sided p of "no relation". nan, nan where x or y is constant."""
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan")
    r = float(np.corrcoef(x, y)[0, 1])
    shuffled = np.random.default_rng(seed).permuted(np.tile(y, (rounds, 1)), axis=1)  # (rounds, n)
    xs, ys = x - x.mean(), shuffled - y.mean()  # (a shuffle keeps y's mean)
    rs = ys @ xs / np.sqrt((ys ** 2).sum(axis=1) * (xs ** 2).sum())  # (rounds,)
    return r, float((np.abs(rs) >= abs(r) - 1e-12).mean())


def standardised(values: np.ndarray) -> np.ndarray:
    """(values - mean) / standard deviation; all zeros where the values do not vary."""
    spread = values.std()
    return (values - values.mean()) / spread if spread > 0 else values * 0.0


def drawn_plan(config: TrainConfig, sizes: dict[str, int]) -> list[str]:
    """The plan the sampler drew for the run of `config` (its only epoch) from the training sizes
    `sizes`, before --spread-tasks."""
    return epoch_plan(config.sampler, sizes, 1, 1, config.batches_per_epoch, config.seed)


def seed_rows(runs_dir: Path, row: str, baseline: str,
              data_dir: str) -> list[tuple[int, str, float, dict | None]]:
    """(seed, task, ROW minus BASELINE on the task's dev score, the measures: None where the seed's
    plan gave the task no batch) for every seed both rows have, in seed order. Against a
    single-task row, a cosine or mnr head's STS is compared with the single-task run of the same
    head (as the ablation's tables do), and left out where the baseline has no such run."""
    rows, sizes = [], {}  # sizes: --max-train-examples -> the training sizes, each file read once
    for seed_dir in seed_dirs(runs_dir / row):
        base_dir = runs_dir / baseline / seed_dir.name
        ours, theirs = seed_scores(seed_dir), seed_scores(base_dir)
        if not ours or not theirs:
            continue
        if not (base_dir / "final_metrics.json").is_file():  # a single-task baseline: STS against the same head
            theirs |= {metric: theirs.get(column) for metric, column in baseline_columns(seed_dir).items()}
        config = TrainConfig.from_dict(read_json_object(seed_dir / "train_config.json", "a run's settings"))
        if config.max_train_examples not in sizes:
            sizes[config.max_train_examples] = train_sizes(data_dir, config.max_train_examples)
        plan = drawn_plan(config, sizes[config.max_train_examples])
        lr = np.array([scheduled_lr(config, step, len(plan)) for step in range(len(plan))])  # (N,)
        for task in TASKS:
            if ours.get(METRIC[task]) is not None and theirs.get(METRIC[task]) is not None:
                rows.append((config.seed, task, ours[METRIC[task]] - theirs[METRIC[task]], placement(plan, task, lr)))
    return rows


def report(rows: list[tuple[int, str, float, dict | None]], title: str) -> str:
    """The seeds' measures and differences, then each measure's r (p) per task and pooled. A seed
    whose plan gave a task no batch has no measures of it (None): its line says so, and the
    correlations leave it out."""
    lines = [f"### {title}", "", "| seed | task | difference | " + " | ".join(MEASURES) + " |",
             "|---" * (3 + len(MEASURES)) + "|"]
    for seed, task, difference, m in rows:
        cells = ["no batch"] * len(MEASURES) if m is None else [form.format(m[key]) for key, form in MEASURES.items()]
        lines.append(f"| {seed} | {task} | {difference:+.4f} | " + " | ".join(cells) + " |")
    if any(m is None for _, _, _, m in rows):
        lines += ["", "no batch: the seed's plan gave the task no batch, so it has no placement; "
                      "the correlations below leave it out."]
    placed = [row for row in rows if row[3] is not None]
    tasks = [task for task in TASKS if any(t == task for _, t, _, _ in placed)]
    if not tasks:  # (no seed gave a compared task a batch)
        return "\n".join(lines) + "\n"
    lines += ["", "| measure | " + " | ".join(f"{t.upper()} r (p)" for t in tasks) + " | pooled r (p) |",
              "|---" * (len(tasks) + 2) + "|"]
    for key in MEASURES:
        cells, pooled_x, pooled_y = [], [], []
        for task in tasks:
            x = np.array([m[key] for _, t, _, m in placed if t == task])
            y = np.array([d for _, t, d, _ in placed if t == task])
            r, p = permutation_r(x, y)
            cells.append(f"{r:+.2f} ({p:.2f}), n={len(x)}")
            pooled_x.append(standardised(x))
            pooled_y.append(standardised(y))
        r, p = permutation_r(np.concatenate(pooled_x), np.concatenate(pooled_y))
        cells.append(f"{r:+.2f} ({p:.2f}), n={sum(len(x) for x in pooled_x)}")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=program_name("multitask.placement"),
        description="Correlate how each seed's drawn plan placed a task's batches with ROW minus BASELINE "
                    "on the task's dev score (the runs of run_ablation.sh; one-epoch random-sampler runs).")
    parser.add_argument("runs_dir", type=Path, help="the ablation's runs folder (RUNS_DIR/<row>/seed<k>/)")
    parser.add_argument("row", help="a multitask row (its runs' train_config.json give each seed's plan)")
    parser.add_argument("baseline", help="the row it is compared with, seed by seed (multitask or single-task)")
    parser.add_argument("--data-dir", default="data",
                        help="the training files the runs used (their sizes draw the plan)")
    args = parser.parse_args(argv)
    for name in (args.row, args.baseline):
        if not (args.runs_dir / name).is_dir():
            parser.error(f"{args.runs_dir / name} does not exist (name a row folder of {args.runs_dir})")
    for seed_dir in seed_dirs(args.runs_dir / args.row):
        config_file = seed_dir / "train_config.json"
        if not config_file.is_file():
            parser.error(f"{config_file} is missing: ROW must be a multitask row, whose runs give their plans")
        try:
            config = read_json_object(config_file, "a run's settings")
        except CheckpointError as err:
            parser.error(str(err))
        if config.get("epochs") != 1 or config.get("sampler") == "round-robin":
            parser.error(f"{config_file}: the tool reads one-epoch runs of a random sampler (this one: "
                         f"{config.get('epochs')} epochs, --sampler {config.get('sampler')})")
    try:
        rows = seed_rows(args.runs_dir, args.row, args.baseline, args.data_dir)
    except (DataError, CheckpointError) as err:  # a file missing or unreadable (the message names it)
        print(f"error: {err}", file=sys.stderr)
        return 1
    if len({seed for seed, _, _, _ in rows}) < 3:
        print(f"error: {args.row} and {args.baseline} share fewer than 3 finished seeds", file=sys.stderr)
        return 1
    print(report(rows, f"{args.row} minus {args.baseline}"), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
