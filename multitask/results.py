"""The results table of a set of runs, in the format of the paper's Figure 3 (Multi-BERT, 5.4).

run_experiments.sh trains each configuration into its own folder, RUNS_DIR/<sampler>-<head>/.
This module reads what every run left there:

    train_config.json     the run's settings (which sampler, which STS head, how long)
    metrics.jsonl         one line of dev metrics per epoch
    final_metrics.json    the best checkpoint's full dev evaluation; present only once a run ends

and writes, next to each other, our numbers and the paper's:

    results.md            a markdown table, model names as the paper writes them ("Ann + Concat");
                          another run found there by its folder and what it trained
    results.csv           the same rows, one column per number, for spreadsheets and scripts
    dev_metrics.png       the dev metrics after every epoch, one line per configuration

A configuration that never started, or stopped before its end, gets a row that says so rather
than an error, so the table can be read while the experiments are still running; so does a run
with a damaged file (the row and a note name it).

    python -m multitask.results runs/gpu
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bert.files import DAMAGED_HINT, WriteError, atomic_write, write_text
from multitask.commands import program_name
from multitask.metrics import METRIC_NAMES  # --tasks -> the score of each

# The seven configurations of the paper (section 5.3), in the order of its results table.
PAPER_CONFIGURATIONS = (
    ("annealed", "concat"), ("annealed", "cosine"), ("annealed", "mnr"),
    ("equitable", "concat"), ("equitable", "cosine"), ("equitable", "mnr"),
    ("round-robin", "dot"),
)

# The paper's dev results (Figure 3; bert-base-uncased, 10 epochs of 3000 batches on a T4):
# (SST accuracy, QQP accuracy, STS Pearson r, overall).
PAPER_RESULTS = {
    "Ann + Concat": (0.529, 0.889, 0.866, 0.784),
    "Ann + CoSim": (0.524, 0.900, 0.388, 0.706),
    "Ann + CoSim + MNR": (0.512, 0.892, 0.410, 0.703),
    "Equit + Concat": (0.520, 0.898, 0.862, 0.782),
    "Equit + CoSim": (0.514, 0.904, 0.428, 0.710),
    "Equit + CoSim + MNR": (0.510, 0.901, 0.420, 0.707),
    "Baseline": (0.505, 0.822, 0.496, 0.692),
}

SAMPLER_NAMES = {"annealed": "Ann", "equitable": "Equit", "round-robin": "RR"}
HEAD_NAMES = {"concat": "Concat", "cosine": "CoSim", "mnr": "CoSim + MNR", "dot": "Dot"}
METRICS = ("sst_acc", "qqp_acc", "sts_corr", "overall")
METRIC_TITLES = {"sst_acc": "SST acc", "qqp_acc": "QQP acc", "sts_corr": "STS r", "overall": "Overall"}


def paper_name(sampler: str, sts_head: str) -> str:
    """The paper's name for a configuration: "Ann + Concat", "Equit + CoSim + MNR", "Baseline"."""
    if (sampler, sts_head) == ("round-robin", "dot"):
        return "Baseline"
    sampler_name = SAMPLER_NAMES.get(sampler, sampler)
    return f"{sampler_name} + {HEAD_NAMES.get(sts_head, sts_head)}"


def run_folder_name(sampler: str, sts_head: str) -> str:
    """The folder run_experiments.sh gives a configuration, e.g. "round-robin-dot"."""
    return f"{sampler}-{sts_head}"


@dataclass
class RunResult:
    """What one configuration's folder says: its status, and its numbers where it has them."""

    sampler: str
    sts_head: str
    folder: Path
    status: str  # "done", "partial (3 of 10 epochs)", "missing", "unreadable: ..."
    metrics: dict[str, float] = field(default_factory=dict)  # the final full dev evaluation
    history: list[dict] = field(default_factory=list)  # metrics.jsonl, one dict per epoch
    config: dict = field(default_factory=dict)  # train_config.json
    best_epoch: int | None = None
    train_seconds: float | None = None  # the epochs' wall time: training plus dev evaluation

    @property
    def tasks(self) -> list[str]:
        """The tasks the run trained (--tasks; all three in a run from before it had the option)."""
        return [t.strip() for t in self.config.get("tasks", ",".join(METRIC_NAMES)).split(",")]

    @property
    def all_tasks(self) -> bool:
        return set(self.tasks) == set(METRIC_NAMES)

    @property
    def name(self) -> str:
        """The paper's name for a three-task run in its configuration's folder. Any other run (in
        another folder, or of fewer tasks) is named by its folder and what it trained, so that it is
        never taken for one of the paper's rows: "my-sst-only (Ann + Concat, sst only)"."""
        configuration = paper_name(self.sampler, self.sts_head)
        if self.folder.name == run_folder_name(self.sampler, self.sts_head) and self.all_tasks:
            return configuration
        trained = "" if self.all_tasks else f", {'+'.join(self.tasks)} only"
        return f"{self.folder.name} ({configuration}{trained})"

    @property
    def done(self) -> bool:
        return self.status == "done"


class DamagedRun(ValueError):
    """A run file that no training run wrote as it is; the message names the file (within its run
    folder) and what is wrong with it."""


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # (JSONDecodeError and UnicodeDecodeError are ValueErrors)
        raise DamagedRun(f"{path.name}: not readable as JSON ({err})") from None


def _read_config(path: Path) -> dict:
    """train_config.json's settings ({} before the run has written them), with the few this
    module reads checked, so that a hand-edited one is reported rather than a crash."""
    if not path.is_file():
        return {}
    config = _read_json(path)
    if not isinstance(config, dict):
        raise DamagedRun(f"{path.name}: not a run's settings (a JSON object)")
    for key in ("sampler", "sts_head", "tasks"):
        if key in config and not isinstance(config[key], str):
            raise DamagedRun(f"{path.name}: {key} is {json.dumps(config[key])}, not a name")
    if "lr" in config and not _is_number(config["lr"]):
        raise DamagedRun(f"{path.name}: lr is {json.dumps(config['lr'])}, not a number")
    return config


def _check_record(record, where: str) -> None:
    """DamagedRun naming `where` (metrics.jsonl and its line) where an epoch's record is not an
    object with a whole epoch number, or one of the values read here is not a number."""
    if not isinstance(record, dict):
        raise DamagedRun(f"{where}: not an epoch's record (a JSON object)")
    if not isinstance(record.get("epoch"), int) or isinstance(record["epoch"], bool):
        raise DamagedRun(f"{where}: epoch is {json.dumps(record.get('epoch'))}, not a whole number")
    for key, value in record.items():
        if key.startswith("grad_") and value is None:
            continue  # the gradient of a task the run did not train
        if (key in METRICS or key == "epoch_seconds" or key.startswith("grad_")) and not _is_number(value):
            raise DamagedRun(f"{where}: {key} is {json.dumps(value)}, not a number")


def _read_history(path: Path) -> list[dict]:
    """metrics.jsonl's records ([] before the first epoch's); a last line cut short by a crash is
    left out, not an error."""
    if not path.is_file():
        return []
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError) as err:
        raise DamagedRun(f"{path.name}: not readable ({err})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):
                break  # the line being written when the run stopped
            raise DamagedRun(f"{path.name} line {number}: not JSON ({err.msg})") from None
        _check_record(record, f"{path.name} line {number}")
        records.append(record)
    return records


def _read_final(path: Path, result: RunResult) -> dict[str, float]:
    """final_metrics.json's score of each task the run trained, and where it trained all three
    the overall score ({} before the run ends). A run of fewer tasks averages its own tasks'
    terms into its "overall", which is not the paper's overall score, so it is left out."""
    if not path.is_file():
        return {}
    values = _read_json(path)
    if not isinstance(values, dict):
        raise DamagedRun(f"{path.name}: not a run's scores (a JSON object)")
    keys = [METRIC_NAMES[t] for t in result.tasks if t in METRIC_NAMES] + (["overall"] if result.all_tasks else [])
    for key in keys:
        if not _is_number(values.get(key)) or not math.isfinite(values[key]):
            what = f"{json.dumps(values[key])}, not a score" if key in values else "missing"
            raise DamagedRun(f"{path.name}: {key} is {what}")
    return {key: float(values[key]) for key in keys}


def read_run(folder: Path, sampler: str, sts_head: str) -> RunResult:
    """Everything a run folder holds, summarised; never raises for a missing or damaged run."""
    result = RunResult(sampler, sts_head, folder, status="missing")
    if not folder.is_dir():
        return result
    try:
        result.config = _read_config(folder / "train_config.json")
        # The run's own settings say what it trained, whatever its folder is called.
        result.sampler = result.config.get("sampler", sampler)
        result.sts_head = result.config.get("sts_head", sts_head)
        result.history = _read_history(folder / "metrics.jsonl")
        result.metrics = _read_final(folder / "final_metrics.json", result)
    except DamagedRun as err:
        result.status = f"unreadable: {err}"
        return result
    scored = [r for r in result.history if "overall" in r and "epoch" in r]
    if scored:
        # The trainer keeps the first epoch that reaches the best overall score (a strict >).
        result.best_epoch = int(max(scored, key=lambda r: r["overall"])["epoch"])
    seconds = [r["epoch_seconds"] for r in result.history if "epoch_seconds" in r]
    result.train_seconds = float(sum(seconds)) if seconds else None
    planned = result.config.get("epochs")
    if result.metrics:
        result.status = "done"
    elif result.history or result.config:
        of = f" of {planned}" if planned else ""
        result.status = f"partial ({len(scored)}{of} epochs)"
    else:
        result.status = "partial (nothing written yet)"
    return result


def _configuration_of(folder: Path) -> tuple[str, str] | None:
    """(sampler, head) of a run folder: from its train_config.json, else from its name."""
    try:
        config = _read_config(folder / "train_config.json")
    except DamagedRun:
        config = {}  # (its row says why)
    if "sampler" in config and "sts_head" in config:
        return config["sampler"], config["sts_head"]
    sampler, _, head = folder.name.rpartition("-")  # samplers may hold a hyphen; heads do not
    if sampler in SAMPLER_NAMES and head in HEAD_NAMES:
        return sampler, head
    return None


def collect_runs(runs_dir: Path) -> list[RunResult]:
    """The paper's seven configurations (present or not), then any other runs found beside them."""
    runs_dir = Path(runs_dir)
    results = [read_run(runs_dir / run_folder_name(s, h), s, h) for s, h in PAPER_CONFIGURATIONS]
    known = {run_folder_name(s, h) for s, h in PAPER_CONFIGURATIONS}
    for folder in sorted(p for p in runs_dir.iterdir() if p.is_dir() and p.name not in known):
        configuration = _configuration_of(folder)
        if configuration is not None:
            results.append(read_run(folder, *configuration))
    return results


# --------------------------------------------------------------------------------------------
# Writing the table
# --------------------------------------------------------------------------------------------


def format_duration(seconds: float | None) -> str:
    """"42 s", "12.5 min", "4 h 03 min": the paper reports hours, a CPU smoke run seconds."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown_table(results: list[RunResult]) -> str:
    """Our full dev evaluation of each best checkpoint, the paper's number beside each of ours."""
    header = ["Model"]
    for metric in METRICS:
        header += [METRIC_TITLES[metric], "(paper)"]
    header += ["Best epoch", "Train time", "Status"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for result in results:
        paper = PAPER_RESULTS.get(result.name)
        cells = [result.name]
        for index, metric in enumerate(METRICS):
            cells.append(_number(result.metrics.get(metric)))
            cells.append(_number(paper[index] if paper else None))
        cells += [str(result.best_epoch) if result.done else "-",
                  format_duration(result.train_seconds) if result.done else "-", result.status]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def settings_summary(results: list[RunResult]) -> list[str]:
    """One line per distinct training setup among the runs, so the table says what it measured."""
    setups: dict[str, list[str]] = {}
    for result in results:
        config = result.config
        if not config:
            continue
        lr = f"{config.get('lr'):g}".replace("e-0", "e-") if "lr" in config else "?"
        setup = (f"{config.get('model')}; epochs {config.get('epochs')} of "
                 f"{config.get('batches_per_epoch')} batches (round-robin: one pass over the "
                 f"smallest dataset); batch {config.get('batch_size')}; lr {lr}; "
                 f"precision {config.get('precision')}; data {config.get('data_dir')}")
        setups.setdefault(setup, []).append(result.name)
    return [f"- {setup}: {', '.join(names)}" for setup, names in setups.items()]


def write_markdown(results: list[RunResult], path: Path) -> None:
    text = ["# Multi-BERT: our dev results beside the paper's", "",
            "Ours: the best epoch's checkpoint (by overall score), evaluated on the full dev sets. "
            "Paper: Figure 3 of 'Multi-BERT: Investigating Methods for BERT Multitask Learning' "
            "(bert-base-uncased, 10 epochs x 3000 batches of 32, lr 1e-5, a T4 GPU, about "
            "4 hours a model). Overall = (SST acc + QQP acc + (STS r + 1) / 2) / 3.", "",
            markdown_table(results)]
    summary = settings_summary(results)
    if summary:
        text += ["Our settings:", "", *summary, ""]
    text += ["QQP: runs on the offline stand-in data (../shared/data) train and evaluate on a "
             "split of the public Quora dev file, so their QQP numbers are not comparable with "
             "the paper's.", ""]
    write_text(path, "\n".join(text))


CSV_COLUMNS = ("model", "sampler", "sts_head", "status", *METRICS, "best_epoch", "epochs_done",
               "train_seconds", *(f"paper_{m}" for m in METRICS), "folder")


def write_csv(results: list[RunResult], path: Path) -> None:
    atomic_write(path, lambda temp: _write_rows(results, temp))


def _write_rows(results: list[RunResult], path: str) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for result in results:
            paper = PAPER_RESULTS.get(result.name)
            row = {"model": result.name, "sampler": result.sampler, "sts_head": result.sts_head,
                   "status": result.status, "best_epoch": result.best_epoch if result.done else "",
                   "epochs_done": len(result.history),
                   "train_seconds": "" if result.train_seconds is None else f"{result.train_seconds:.1f}",
                   "folder": str(result.folder)}
            for index, metric in enumerate(METRICS):
                row[metric] = f"{result.metrics[metric]:.4f}" if metric in result.metrics else ""
                row[f"paper_{metric}"] = paper[index] if paper else ""
            writer.writerow(row)


def write_plot(results: list[RunResult], path: Path) -> bool:
    """The dev metrics after each epoch, one line per run; False when matplotlib is absent.

    These are the per-epoch evaluations the trainer chose its best checkpoint by (with QQP capped
    where --qqp-eval-examples was given), so they may differ slightly from the table's numbers.
    """
    plt = pyplot()
    if plt is None:
        return False
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True)
    plotted = [r for r in results if any("overall" in record for record in r.history)]
    for axis, metric in zip(axes.flat, METRICS):
        for index, result in enumerate(plotted):
            points = [(r["epoch"], r[metric]) for r in result.history if metric in r]
            if not points or (metric == "overall" and not result.all_tasks):
                continue  # a task the run did not train; a run of fewer tasks has no overall score
            epochs, values = zip(*points)
            style = "-" if result.done else "--"  # dashed: a run that has not finished
            # (a run's own colour in every panel, also where a run of fewer tasks is left out)
            axis.plot(epochs, values, style, color=f"C{index % 10}", marker="o", markersize=3, label=result.name)
        axis.set_title(f"dev {METRIC_TITLES[metric]}")
        axis.grid(alpha=0.3)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    for axis in axes[1]:
        axis.set_xlabel("epoch")
    if plotted:  # one legend for all four panels, below them (a run of fewer tasks is in some only)
        labelled = {}
        for axis in axes.flat:
            for handle, label in zip(*axis.get_legend_handles_labels()):
                labelled.setdefault(label, handle)
        figure.legend(list(labelled.values()), list(labelled), loc="lower center", ncol=4, fontsize=9)
    figure.suptitle("Multi-BERT: dev metrics after each epoch (dashed: unfinished runs)")
    figure.tight_layout(rect=(0, 0.08, 1, 1))  # leave room for the legend
    save_png(figure, path, dpi=120)
    return True


def write_interference_plot(results: list[RunResult], path: Path) -> bool:
    """How the tasks pulled on the shared encoder in each epoch: each task's mean encoder
    gradient norm, and with --probe-every the cosine between the tasks' gradients (negative:
    they conflict). False when no run logged them, or without matplotlib."""
    series = {"grad_norm": ("mean encoder gradient norm", ("sst", "qqp", "sts")),
              "grad_cosine": ("gradient cosine between tasks", ("sst_qqp", "sst_sts", "qqp_sts"))}
    logged = [r for r in results if any(k.startswith("grad_") for record in r.history for k in record)]
    plt = pyplot()
    if not logged or plt is None:
        return False
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for axis, (prefix, (title, names)) in zip(axes, series.items()):
        for result, style in zip(logged, ["-", "--", ":", "-."] * len(logged)):
            for name, colour in zip(names, ("tab:blue", "tab:orange", "tab:green")):
                points = [(r["epoch"], r[f"{prefix}_{name}"]) for r in result.history
                          if r.get(f"{prefix}_{name}") is not None]
                if points:
                    epochs, values = zip(*points)
                    axis.plot(epochs, values, style, color=colour, marker="o", markersize=3,
                              label=f"{result.name}: {name}")
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend(fontsize=7)
    figure.tight_layout()
    save_png(figure, path, dpi=120)
    return True


# matplotlib is optional: the setup.py extra "plots" installs it (as report.py's hint for tensorboard)
PLOTS_INSTALL_HINT = "pip install -e '.[plots]'"


def no_plot_message(what: str) -> str:
    """Why `what` (a plot) was not drawn: matplotlib is missing, and how to install it."""
    return f"matplotlib is not installed, so {what} could not be drawn ({PLOTS_INSTALL_HINT})"


def pyplot():
    """matplotlib.pyplot drawing into files only (no display needed), or None when matplotlib is
    not installed (PLOTS_INSTALL_HINT)."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(figure, path: Path, dpi: int) -> None:
    """Write a matplotlib `figure` to `path` as PNG, whole or not at all (`atomic_write`), and
    close it, also when the write fails (WriteError: a full disk), so no figure stays open."""
    try:
        atomic_write(path, lambda temp: figure.savefig(temp, dpi=dpi, format="png"))
    finally:
        pyplot().close(figure)  # (matplotlib is there: it drew the figure)


@dataclass
class ResultsConfig:
    runs_dir: str
    out_dir: str | None = None  # default: runs_dir
    plot: bool = True


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=program_name("multitask.results"),
        description="Tabulate the runs in RUNS_DIR (one folder per configuration, as "
                    "run_experiments.sh writes them) beside the paper's results, and plot their "
                    "dev metrics per epoch. Writes results.md, results.csv and dev_metrics.png "
                    "(into RUNS_DIR, or --out) and prints the table.")
    parser.add_argument("runs_dir", metavar="RUNS_DIR",
                        help="folder holding one run folder per configuration, e.g. runs/gpu")
    parser.add_argument("--out", dest="out_dir", default=None,
                        help="where results.md, results.csv and dev_metrics.png go (default: RUNS_DIR)")
    parser.add_argument("--no-plot", action="store_true", help="write the tables only")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = ResultsConfig(runs_dir=args.runs_dir, out_dir=args.out_dir, plot=not args.no_plot)
    runs_dir = Path(config.runs_dir)
    if not runs_dir.is_dir():
        print(f"error: {runs_dir} is not a folder; pass the folder that holds the run folders "
              f"(e.g. runs/gpu)", file=sys.stderr)
        return 1
    results = collect_runs(runs_dir)
    if all(r.status == "missing" for r in results):  # (a wrong folder: no table of seven blanks)
        print(f"error: {runs_dir} holds no run folder (such as {run_folder_name(*PAPER_CONFIGURATIONS[0])}/); "
              f"pass the folder that holds them (run_experiments.sh's runs/<profile>)", file=sys.stderr)
        return 1
    out_dir = Path(config.out_dir or runs_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a file there or above it, or a place that cannot be written
        print(f"error: --out {out_dir}: cannot create the folder ({err.strerror or err}); "
              f"pass --out a folder that can be created and written", file=sys.stderr)
        return 1
    try:  # each file whole or not at all (bert.files.atomic_write)
        write_markdown(results, out_dir / "results.md")
        write_csv(results, out_dir / "results.csv")
        print(markdown_table(results), end="")
        written = [out_dir / "results.md", out_dir / "results.csv"]
        if config.plot and not write_plot(results, out_dir / "dev_metrics.png"):
            print(no_plot_message("the plots") + "; the tables are written.")
        elif config.plot:
            written.append(out_dir / "dev_metrics.png")
            if write_interference_plot(results, out_dir / "task_interference.png"):
                written.append(out_dir / "task_interference.png")
            else:
                print("no run logged its tasks' gradient norms on the encoder, so there is no "
                      "task_interference.png")
    except WriteError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    unreadable = [r for r in results if r.status.startswith("unreadable: ")]
    unfinished = [r.name for r in results if not r.done and r not in unreadable]
    if unfinished:
        print(f"not finished: {', '.join(unfinished)}")
    for result in unreadable:  # its row says so; here the file's whole path and what to do
        print(f"note: {result.folder}/{result.status.removeprefix('unreadable: ')}; {DAMAGED_HINT}",
              file=sys.stderr)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
