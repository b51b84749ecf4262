"""The multitask ablation's table: each row's dev scores over seeds, and multitask against
single-task at the same per-task steps (run_ablation.sh trains the runs).

    python -m multitask.ablation runs/ablation          # writes ablation.md, .csv and .png there
    python -m multitask.ablation runs/ablation --update docs/ablation.md   # the tables there too
    python -m multitask.ablation --plan-counts --data-dir D --batches 600 --seed 0
    python -m multitask.ablation --baseline-runs='--recipe tuned --sts-head cosine'   # sst=sst qqp=qqp sts=sts-cosine-paired

A row folder holds seed<k>/ folders. A multitask row's seed folder is a run (final_metrics.json);
a single-task row's holds one run per task (sst/, qqp/, sts/; and the other heads' runs:
qqp-siamese/ for the siamese paraphrase head; sts-cosine/, sts-cosine-paired/ and sts-cosent/
for the cosine head with each of its losses and --paired-dropout), whose scores together make
the row's line.
`--plan-counts` prints how many of a multitask run's batches each task gets (sst qqp sts), so
that the single-task runs train the same steps.

Besides each row's mean and spread, the table gives each multitask row's difference from the
single-task row (single-tuned by default) seed by seed: seed k of both trained the same per-task
steps on the same data order, so the paired difference cancels most of what a seed changes (with
its 95% confidence interval over the seeds, `signed`), and for a row of more than three seeds
how many of its blocks of three seeds are at or above single-task on every task (`block_shares`:
issue 15's target is checked on three seeds). Each task is compared with the
single-task run of the same head: a row with the cosine head on STS with the single-task cosine
run of the same loss and dropout (sts-cosine/, sts-cosine-paired/ with --paired-dropout,
sts-cosent/ with --sts-loss cosent), a row with the MNR head with the single-task MNR run of the
same dropout (sts-mnr/, sts-mnr-paired/), the concat and dot heads with the single-task concat
run; a row with the siamese paraphrase head on QQP with the qqp-siamese/ run.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import re
import shlex
import statistics
import sys
from itertools import combinations
from pathlib import Path

from bert.files import DAMAGED_HINT, CheckpointError, WriteError, read_json_object, read_json_records, write_text
from multitask.config import SEED_LIMIT, TASKS, add_arguments, config_from_args, positive_int
from multitask.data import DataError
from multitask.metrics import overall_score
from multitask.results import no_plot_message, pyplot, save_png

METRICS = ("sst_acc", "qqp_acc", "sts_corr", "overall")
SINGLE_TASK_RUNS = {"sst": "sst_acc", "qqp": "qqp_acc", "sts": "sts_corr"}
# The single-task runs of the other heads: folder -> (the score it gives, its column).
OTHER_HEAD_RUNS = {"qqp-siamese": ("qqp_acc", "qqp_acc_siamese"),  # the siamese paraphrase head
                   "sts-cosine": ("sts_corr", "sts_corr_cosine"),  # the cosine head, squared error
                   "sts-cosine-paired": ("sts_corr", "sts_corr_cosine_paired"),  # the same, --paired-dropout
                   "sts-cosent": ("sts_corr", "sts_corr_cosent"),  # the cosine head, CoSENT
                   "sts-mnr": ("sts_corr", "sts_corr_mnr"),  # the MNR head (one epoch: its ranking loss)
                   "sts-mnr-paired": ("sts_corr", "sts_corr_mnr_paired")}  # the same, --paired-dropout


def train_sizes(data_dir: str, max_train_examples: int | None = None) -> dict[str, int]:
    """Each task's number of training examples, the sizes the sampler draws a plan from (capped
    at --max-train-examples where a run has it)."""
    from multitask.data import dataset_paths, load_quora, load_sst, load_sts

    paths = dataset_paths(data_dir)
    sizes = {"sst": len(load_sst(paths["sst-train"]).examples),
             "qqp": len(load_quora(paths["quora-train"]).examples),
             "sts": len(load_sts(paths["sts-train"]).examples)}
    if max_train_examples is not None:
        sizes = {task: min(size, max_train_examples) for task, size in sizes.items()}
    return sizes


def plan_counts(data_dir: str, batches: int, seed: int, max_train_examples: int | None = None) -> dict[str, int]:
    """Each task's number of batches in the one-epoch annealed plan of `batches` batches (of a
    run with --max-train-examples, whose sizes are the capped ones)."""
    from multitask.samplers import epoch_plan

    plan = epoch_plan("annealed", train_sizes(data_dir, max_train_examples), 1, 1, batches, seed)
    return {task: plan.count(task) for task in TASKS}


def read_scores(path: Path, needs: tuple[str, ...] = ()) -> dict | None:
    """A run's final_metrics.json, None where the run has not finished. CheckpointError naming
    the file where it is not a run's scores: damaged, not an object, a score no number, or
    without a score of `needs`."""
    if not path.is_file():
        return None
    final = read_json_object(path, "a run's scores")
    missing = [key for key in needs if key not in final]
    not_numbers = [key for key in (*SINGLE_TASK_RUNS.values(), "overall")  # NaN only in a hand-edited file
                   if key in final and not (isinstance(final[key], (int, float)) and math.isfinite(final[key]))]
    if missing or not_numbers:
        raise CheckpointError(f"{path}: {(missing + not_numbers)[0]} is missing or not a number; {DAMAGED_HINT}")
    return final


def seed_scores(seed_dir: Path) -> dict[str, float] | None:
    """One seed's dev scores for a row: a multitask run's, or the single-task runs' together."""
    final = read_scores(seed_dir / "final_metrics.json", needs=("overall",))
    if final is not None:  # a multitask run; a pair's "overall" averages two tasks, so it is left out
        scores = {k: final[k] for k in SINGLE_TASK_RUNS.values() if k in final}
        return scores | ({"overall": final["overall"]} if len(scores) == len(SINGLE_TASK_RUNS) else {})
    scores = {}
    for run, metric in SINGLE_TASK_RUNS.items():
        single = read_scores(seed_dir / run / "final_metrics.json", needs=(metric,))
        if single is not None:
            scores[metric] = single[metric]
    for run, (metric, column) in OTHER_HEAD_RUNS.items():
        other = read_scores(seed_dir / run / "final_metrics.json", needs=(metric,))
        if other is not None:
            scores[column] = other[metric]
    if all(m in scores for m in SINGLE_TASK_RUNS.values()):
        scores["overall"] = overall_score(scores["sst_acc"], scores["qqp_acc"], scores["sts_corr"])
    return scores or None


def seed_number(text: str) -> int:
    """argparse type for --seed: a seed the trainer can use (0 <= seed < config.SEED_LIMIT)."""
    value = int(text)
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"must be from 0 to {SEED_LIMIT - 1}, got {value}")
    return value


def row_dirs(runs_dir: Path) -> list[Path]:
    """The ablation's row folders (one per row, named after it), by name."""
    return sorted(p for p in runs_dir.iterdir() if p.is_dir())


def seed_dirs(row_dir: Path) -> list[Path]:
    """A row's seed<k> folders in the order of k (seed2 before seed10, as the seeds ran)."""
    def number(folder: Path) -> tuple[int, str]:
        digits = folder.name[len("seed"):]
        return (int(digits), "") if digits.isdigit() else (-1, folder.name)  # any other name first, by name
    return sorted(row_dir.glob("seed*"), key=number)


def collect(runs_dir: Path) -> dict[str, dict[str, list[float]]]:
    """row -> metric -> the values of the seeds that have it (in seed order)."""
    rows: dict[str, dict[str, list[float]]] = {}
    for row_dir in row_dirs(runs_dir):
        for seed_dir in seed_dirs(row_dir):
            scores = seed_scores(seed_dir)
            for metric, value in (scores or {}).items():
                rows.setdefault(row_dir.name, {}).setdefault(metric, []).append(value)
    return rows


DIAGNOSTICS = ("grad_norm_sst", "grad_norm_qqp", "grad_norm_sts",
               "grad_cosine_sst_qqp", "grad_cosine_sst_sts", "grad_cosine_qqp_sts")


def diagnostics(runs_dir: Path) -> dict[str, dict[str, list[float]]]:
    """row -> gradient diagnostic -> the seeds' values, from each multitask run's last epoch in
    metrics.jsonl (mean encoder gradient norm per task; with --probe-every, the mean cosines)."""
    rows: dict[str, dict[str, list[float]]] = {}
    for row_dir in row_dirs(runs_dir):
        for seed_dir in seed_dirs(row_dir):
            metrics = seed_dir / "metrics.jsonl"
            if not (seed_dir / "final_metrics.json").is_file() or not metrics.is_file():
                continue  # a single-task row (its runs are one level down), or unfinished
            records = read_json_records(metrics)
            last = records[-1] if records else {}
            for name in DIAGNOSTICS:
                if last.get(name) is not None:  # None: a task this run did not train
                    rows.setdefault(row_dir.name, {}).setdefault(name, []).append(last[name])
    return rows


def diagnostics_table(rows: dict[str, dict[str, list[float]]]) -> str:
    """The seeds' mean of each diagnostic per row."""
    lines = ["| row | " + " | ".join(DIAGNOSTICS) + " |", "|---" * (len(DIAGNOSTICS) + 1) + "|"]
    for row, values in rows.items():
        lines.append(f"| {row} | " + " | ".join(
            f"{statistics.mean(values[d]):+.3f}" if d.startswith("grad_cosine") and d in values
            else f"{statistics.mean(values[d]):.2f}" if d in values else "" for d in DIAGNOSTICS) + " |")
    return "\n".join(lines) + "\n"


def baseline_runs(config: dict) -> dict[str, str]:
    """The single-task run (a folder of a single-task row's seed) that each task of a run with these
    settings (TrainConfig.to_dict()) is compared with, and taught by in a -bam row: sst/; qqp/, or
    qqp-siamese/ for the siamese paraphrase head; for STS the run of the same head: sts/ for the
    concat and dot heads, sts-cosine/ or sts-cosine-paired/ (by --paired-dropout) or sts-cosent/
    (by its loss) for the cosine head, sts-mnr/ or sts-mnr-paired/ for the MNR head."""
    paired = "-paired" if config.get("paired_dropout") else ""
    sts = {"cosine": "sts-cosent" if config.get("sts_loss") == "cosent" else f"sts-cosine{paired}",
           "mnr": f"sts-mnr{paired}"}.get(config.get("sts_head"), "sts")
    return {"sst": "sst", "qqp": "qqp-siamese" if config.get("paraphrase_head") == "siamese" else "qqp", "sts": sts}


def baseline_columns(seed_dir: Path) -> dict[str, str]:
    """The scores of a run compared with another head's single-task column than the plain one
    (`baseline_runs`): {"sts_corr": "sts_corr_cosine_paired"} for the cosine head with paired
    dropout, {"qqp_acc": "qqp_acc_siamese"} for the siamese paraphrase head, ...; empty for the
    joint paraphrase head with the concat or dot head."""
    config_file = seed_dir / "train_config.json"
    config = read_json_object(config_file, "a run's settings") if config_file.is_file() else {}
    return dict(OTHER_HEAD_RUNS[run] for run in baseline_runs(config).values() if run in OTHER_HEAD_RUNS)


# A lever that changes how single-task runs train too (its row name ends in it) is compared with
# single-task runs trained with it; so is a row of the paper's recipe. run_ablation.sh trains these
# baselines (and takes a -bam row's teachers from them).
LEVER_BASELINES = {"-head10": "single-tuned-head10", "-ls": "single-tuned-ls", "-lld": "single-tuned-lld",
                   "-lld0.9": "single-tuned-lld0.9", "-avg10": "single-tuned-avg10",
                   "-drop0.1": "single-tuned-drop0.1"}


def own_baseline(row: str) -> str | None:
    """The single-task row of a multitask row's own recipe and lever (`multi-tuned-concat-head10-bam`:
    `single-tuned-head10`; `multi-paper-concat`: `single-paper`); None for a row of the plain
    tuned recipe and for rows that are not multitask rows."""
    if not row.startswith("multi-"):
        return None
    name = re.sub(r"-bam(-(sst|qqp|sts))*$", "", row)  # -bam, or -bam-sst-qqp: teachers for some tasks
    if name.startswith("multi-paper-"):
        return "single-paper"
    return next((baseline for lever, baseline in LEVER_BASELINES.items() if name.endswith(lever)), None)


def baselines(runs_dir: Path, default: str, against: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """Each row's baseline where it is not `default`: `against`'s, else the row's own (where
    RUNS_DIR holds it); and a note for each row whose own baseline is missing (it is then
    compared with `default`, another recipe)."""
    chosen, notes = dict(against), []
    for row in (p.name for p in row_dirs(runs_dir) if p.name not in against and p.name != default):
        own = own_baseline(row)
        if own is None or own == default:
            continue
        if (runs_dir / own).is_dir():
            chosen[row] = own
        else:
            notes.append(f"note: {runs_dir} has no {own} row, so the table compares {row} with {default}, "
                         f"another recipe; run the {own} row (ROWS={own}) to compare it with its own")
    return chosen, notes


def paired_differences(runs_dir: Path, baseline: str,
                       against: dict[str, str] | None = None) -> dict[str, dict[str, list[float]]]:
    """row -> metric -> (row - baseline) for each seed both have: a multitask row's scores
    against the single-task row's of the same seed, STS against the same kind of head. A row of
    two tasks (pair-*) is compared on its two tasks only. `against` names another baseline for
    some rows (a row trained with another recipe, against single-task runs of that recipe)."""
    differences: dict[str, dict[str, list[float]]] = {}
    for row_dir in row_dirs(runs_dir):
        base_dir = runs_dir / (against or {}).get(row_dir.name, baseline)
        if base_dir == row_dir:
            continue
        for seed_dir in seed_dirs(row_dir):
            ours, theirs = seed_scores(seed_dir), seed_scores(base_dir / seed_dir.name)
            if not (seed_dir / "final_metrics.json").is_file() or not theirs or "overall" not in theirs:
                continue  # a single-task row (its runs are one level down), or no complete baseline
            columns = baseline_columns(seed_dir)  # compare like with like
            if any(column not in theirs for column in columns.values()):
                continue
            theirs = {**theirs, **{metric: theirs[column] for metric, column in columns.items()}}
            theirs["overall"] = overall_score(theirs["sst_acc"], theirs["qqp_acc"], theirs["sts_corr"])
            for metric in METRICS:
                if metric in ours and metric in theirs:
                    differences.setdefault(row_dir.name, {}).setdefault(metric, []).append(ours[metric] - theirs[metric])
    return differences


def signed(values: list[float]) -> str:
    """The mean paired difference, signed, then from two seeds on its 95% confidence interval,
    then the seeds' values: +0.004 [-0.003, +0.011] (+0.005 / -0.001 / +0.008).

    The interval is Student's t over the seeds' differences: mean +- t(0.975, n - 1) * s / sqrt(n),
    s their sample standard deviation. It says how far the mean could be from what more seeds
    would give, if the seeds' differences scatter like independent normal draws: with three seeds
    t is 4.30, so a difference must be large against its scatter before its sign is known.
    """
    mean, each = statistics.mean(values), " / ".join(f"{v:+.3f}" for v in values)
    if len(values) < 2:
        return f"{mean:+.3f} ({each})"
    import scipy.stats  # (here: the script's per-seed questions are answered without it, a second sooner)

    half = scipy.stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return f"{mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}] ({each})"


def difference_table(differences: dict[str, dict[str, list[float]]], baseline: str,
                     against: dict[str, str] | None = None) -> str:
    header = f"row, minus {baseline} (paired by seed): mean [95% CI] (each seed)"
    lines = [f"| {header} | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for row, metrics in differences.items():
        name = f"{row}, minus {against[row]}" if row in (against or {}) else row
        lines.append(f"| {name} | " + " | ".join(signed(metrics[m]) if m in metrics else "" for m in METRICS) + " |")
    return "\n".join(lines) + "\n"


TARGET_TASKS = tuple(SINGLE_TASK_RUNS.values())  # sst_acc, qqp_acc, sts_corr: the scores the target asks for


def block_shares(values: dict[str, list[float]], size: int = 3) -> dict[str, tuple[int, int]]:
    """How often a check on `size` seeds would find a row at or above single-task: of all the
    blocks of `size` of the row's seeds, how many have a mean paired difference >= 0, on each
    task and on every task at once ("every"); each as (blocks passing, blocks).

    Issue 15's target is such a check (the mean of 3 seeds at or above single-task on every
    task, on seeds not seen before). The blocks reuse the seeds' own differences, with each
    seed's three tasks kept together, so the share estimates, without a model of the scatter,
    how likely a fresh check of that size is to pass. An exact tie counts as "at": a mean
    within 1e-9 below zero is a tie in the scores (accuracies equal to the example), off by
    floating point's rounding of the differences.
    """
    seeds = len(values[TARGET_TASKS[0]])
    blocks = list(combinations(range(seeds), size))
    at_or_above = {task: [sum(values[task][i] for i in block) / size >= -1e-9 for block in blocks]
                   for task in TARGET_TASKS}
    shares = {task: (sum(passed), len(blocks)) for task, passed in at_or_above.items()}
    shares["every"] = (sum(all(each) for each in zip(*at_or_above.values())), len(blocks))
    return shares


def block_table(differences: dict[str, dict[str, list[float]]], size: int = 3) -> str:
    """`block_shares` of every three-task row with more seeds than `size` (with exactly `size`
    there is one block: the row's mean, in the table above); empty if there is none."""
    rows = {row: block_shares(values, size) for row, values in differences.items()
            if all(len(values.get(task, [])) > size for task in TARGET_TASKS)}
    if not rows:
        return ""
    lines = [f"| row: blocks of {size} seeds whose mean is at or above single-task | every task | "
             + " | ".join(TARGET_TASKS) + " |", "|---" * (len(TARGET_TASKS) + 2) + "|"]
    for row, shares in rows.items():
        cells = [shares[key] for key in ("every", *TARGET_TASKS)]  # (blocks passing, blocks) per column
        lines.append(f"| {row} | " + " | ".join(f"{passed / total:.2f} ({passed} of {total})" for passed, total in cells)
                     + " |")
    return "\n".join(lines) + "\n"


MARKERS = ("^", "x", "*", "+", "v", "d")  # in OTHER_HEAD_RUNS' order
COLORS = ("tab:purple", "tab:orange", "tab:red", "tab:green", "tab:brown", "tab:pink")


def plot(rows: dict[str, dict[str, list[float]]], path: Path) -> bool:
    """Each row's seeds (dots) and mean (bar) per dev score, one panel per score, and the other
    heads' single-task scores: the cosine head's STS (crosses: its squared error; stars: the
    same with --paired-dropout; pluses: CoSENT), the MNR head's STS (triangles down; diamonds: with
    --paired-dropout), the siamese paraphrase head's QQP (triangles); False when matplotlib is absent."""
    plt = pyplot()
    if plt is None:
        return False
    names = list(rows)
    figure, axes = plt.subplots(1, len(METRICS), figsize=(3.6 * len(METRICS), 0.4 * len(names) + 1.6), sharey=True)
    for axis, metric in zip(axes, METRICS):
        scored = []
        for y, name in enumerate(names):
            values = rows[name].get(metric, [])
            for (scored_metric, column), marker, color in zip(OTHER_HEAD_RUNS.values(), MARKERS, COLORS, strict=True):
                if metric == scored_metric and rows[name].get(column):
                    other_head = rows[name][column]  # that head's single-task scores
                    axis.plot(other_head, [y] * len(other_head), marker, color=color)
                    scored += other_head
            if values:
                axis.barh(y, statistics.mean(values), color="tab:blue", alpha=0.3)
                axis.plot(values, [y] * len(values), "o", color="tab:blue", markersize=4)
                scored += values
        if scored:
            axis.set_xlim(min(scored) - 0.02, max(scored) + 0.02)
        axis.set_title(metric)
        axis.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(names)), names)
    axes[0].invert_yaxis()
    figure.suptitle("dev scores: seeds (dots), mean (bar); single-task, other heads: siamese paraphrase (^), "
                    "cosine STS with its squared error (x), with paired dropout (*), with CoSENT (+); "
                    "MNR STS (v), with paired dropout (d)", fontsize=10)
    figure.tight_layout()
    save_png(figure, path, dpi=110)
    return True


def summary(values: list[float]) -> str:
    """mean ± sample standard deviation (n seeds); a single seed has no spread."""
    if len(values) == 1:
        return f"{values[0]:.3f} (n=1)"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f} (n={len(values)})"


def table(rows: dict[str, dict[str, list[float]]]) -> str:
    columns = [*METRICS, *(column for _, column in OTHER_HEAD_RUNS.values())]
    lines = ["| row | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for row, metrics in rows.items():
        lines.append(f"| {row} | " + " | ".join(summary(metrics[c]) if c in metrics else "" for c in columns) + " |")
    return "\n".join(lines) + "\n"


def table_key(header: str) -> tuple[str, str]:
    """A Markdown table's identity: its header's first two cells."""
    cells = [cell.strip() for cell in header.strip().strip("|").split("|")]
    return cells[0], cells[1] if len(cells) > 1 else ""


def update_tables(markdown: str, tables: str) -> tuple[str, int]:
    """`markdown` with each table whose header starts like one of `tables` (blank-line separated,
    as ablation.md writes them) replaced by that table; also how many were replaced. So
    docs/ablation.md shows the numbers of the runs, with the prose around them left alone."""
    generated = {table_key(block.splitlines()[0]): block.strip().splitlines()
                 for block in tables.strip().split("\n\n")}
    lines, out, replaced, i = markdown.split("\n"), [], 0, 0
    while i < len(lines):
        is_header = lines[i].startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|---")
        if is_header and (new := generated.get(table_key(lines[i]))):
            out.extend(new)
            while i < len(lines) and lines[i].startswith("|"):  # skip the old table
                i += 1
            replaced += 1
            continue
        out.append(lines[i])
        i += 1
    return "\n".join(out), replaced


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m multitask.ablation",
        description="Tabulate run_ablation.sh's runs (RUNS_DIR/<row>/seed<k>/...): mean and spread of "
                    "each dev score per row; writes RUNS_DIR/ablation.md and ablation.csv.")
    parser.add_argument("runs_dir", nargs="?", type=Path, help="the ablation's runs folder")
    parser.add_argument("--plan-counts", action="store_true",
                        help="print the batches each task gets in a multitask run (sst qqp sts) and stop")
    parser.add_argument("--data-dir", default="data", help="with --plan-counts: the training files")
    parser.add_argument("--batches", type=positive_int, default=600, help="with --plan-counts: the run's batches")
    parser.add_argument("--seed", type=seed_number, default=0, help="with --plan-counts: the run's --seed")
    parser.add_argument("--max-train-examples", type=positive_int, default=None,
                        help="with --plan-counts: the run's --max-train-examples (each task's size capped)")
    parser.add_argument("--baseline", default="single-tuned",
                        help="the single-task row the multitask rows are compared with, seed by seed (a "
                             "row of the paper's recipe, or whose name ends in a lever single-task runs "
                             "take too, -head10, -ls, -lld, -lld0.9, -avg10, -drop0.1, with its own: single-paper, "
                             "single-tuned-head10, ..., where RUNS_DIR has it)")
    parser.add_argument("--against", action="append", default=[], metavar="ROW=BASELINE",
                        help="compare ROW with BASELINE instead; may be repeated")
    parser.add_argument("--baseline-runs", metavar="FLAGS",
                        help="print the single-task runs (task=folder) that a multitask run with these "
                             "multitask_classifier.py flags is compared with and a -bam row is taught by, "
                             "and stop; give it as --baseline-runs='--recipe tuned --sts-head cosine ...'")
    parser.add_argument("--own-baseline", metavar="ROW",
                        help="print the single-task row ROW is compared with by default, and stop")
    parser.add_argument("--update", action="append", default=[], type=Path, metavar="MARKDOWN",
                        help="also replace the tables of this Markdown file (docs/ablation.md) "
                             "whose header matches one written here; may be repeated")
    args = parser.parse_args(argv)
    if args.baseline_runs is not None:
        flags = argparse.ArgumentParser(prog="--baseline-runs", add_help=False)
        add_arguments(flags)
        config = config_from_args(flags.parse_args(shlex.split(args.baseline_runs)))  # the recipe's settings filled in
        print(*(f"{task}={run}" for task, run in baseline_runs(config.to_dict()).items()))
        return 0
    if args.own_baseline:
        print(own_baseline(args.own_baseline) or args.baseline)
        return 0
    if args.plan_counts:
        try:
            counts = plan_counts(args.data_dir, args.batches, args.seed, args.max_train_examples)
        except DataError as err:  # a training file missing or unreadable (the message names it)
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(*counts.values())
        return 0
    if args.runs_dir is None or not args.runs_dir.is_dir():
        parser.error(f"{args.runs_dir}: not a folder of ablation runs")
    against = dict(item.split("=", 1) for item in args.against if "=" in item)
    if len(against) != len(args.against):
        parser.error(f"--against takes ROW=BASELINE; got {', '.join(a for a in args.against if '=' not in a)}")
    for row, baseline in against.items():  # a misspelt name would compare ROW with the wrong runs, or drop it
        for name in (row, baseline):
            if not (args.runs_dir / name).is_dir():
                parser.error(f"--against {row}={baseline}: {args.runs_dir / name} does not exist "
                             f"(name a row folder of {args.runs_dir})")
    for path in args.update:
        if not path.is_file():
            parser.error(f"--update {path}: no such file")
    try:  # a damaged run file (its message names it) stops the tables, never with a traceback
        rows = collect(args.runs_dir)
        if not rows:
            print(f"error: {args.runs_dir}: no finished run (final_metrics.json) yet", file=sys.stderr)
            return 1
        text = table(rows)
        against, notes = baselines(args.runs_dir, args.baseline, against)
        for note in notes:
            print(note, file=sys.stderr)
        differences = paired_differences(args.runs_dir, args.baseline, against)
        if differences:
            text += "\n" + difference_table(differences, args.baseline, against)
            blocks = block_table(differences)  # how likely a fresh 3-seed check of issue 15's target passes
            if blocks:
                text += "\n" + blocks
        gradients = diagnostics(args.runs_dir)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if gradients:
        text += "\n" + diagnostics_table(gradients)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["row", "metric", "seed_values"])
    for row, metrics in rows.items():
        for metric, values in metrics.items():
            writer.writerow([row, metric, " ".join(f"{v:.4f}" for v in values)])
    try:  # each file whole or not at all: a full disk never leaves a page of docs cut short
        write_text(args.runs_dir / "ablation.md", text)
        if not plot(rows, args.runs_dir / "ablation.png"):
            print(no_plot_message("ablation.png"), file=sys.stderr)
        write_text(args.runs_dir / "ablation.csv", out.getvalue())
        print(text, end="")
        for path in args.update:
            updated, replaced = update_tables(path.read_text(), text)
            write_text(path, updated)
            print(f"{path}: {replaced} table(s) replaced", file=sys.stderr)
    except WriteError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
