"""multitask.placement: how a drawn plan placed each task's batches, against the rows' differences."""

import json

import numpy as np
import pytest

from multitask import placement
from multitask.ablation import train_sizes
from multitask.config import TrainConfig
from multitask.samplers import epoch_plan, spread_evenly

from synthetic import write_dataset


def test_the_measures_of_a_hand_worked_plan():
    plan, lr = ["a", "b", "b", "a", "b", "b"], np.arange(1.0, 7.0)  # N = 6, the rate 1..6
    # a at steps 0 and 3, due at 1.5 and 4.5 (middles 0.5 and 3.5); gaps 0, 2, 2; rate 1 + 4 of 21 * 2/6
    assert placement.placement(plan, "a", lr) == pytest.approx(
        {"longest gap": 2, "mean offset": 1.0, "lateness": 2 / 6 - 0.5, "lr share": 5 / 7})
    # b at 1, 2, 4, 5, due at 0.75, 2.25, 3.75, 5.25 (middles 1.5, 2.5, 4.5, 5.5); gaps 1, 0, 1, 0, 0
    assert placement.placement(plan, "b", lr) == pytest.approx(
        {"longest gap": 1, "mean offset": 0.5, "lateness": 3.5 / 6 - 0.5, "lr share": 16 / 14})
    # the steps before a task's first batch and after its last count as gaps too
    assert placement.placement(["x", "x", "x", "a", "x", "a"], "a", np.ones(6))["longest gap"] == 3
    assert placement.placement(["a", "x", "a", "x", "x", "x"], "a", np.ones(6))["longest gap"] == 3
    assert placement.placement(["x", "a", "x"], "x", np.ones(3))["longest gap"] == 1


def test_spreading_a_drawn_plan_removes_the_offsets_and_the_gaps():
    sizes = {"sst": 8544, "qqp": 141506, "sts": 6040}
    plan = epoch_plan("annealed", sizes, 1, 1, 600, seed=4)
    lr = np.linspace(1.0, 0.0, 600, endpoint=False)
    for task in sizes:
        drawn, spread = placement.placement(plan, task, lr), placement.placement(spread_evenly(plan), task, lr)
        assert spread["mean offset"] <= 1.0 < drawn["mean offset"]  # the bound of spread_evenly, 3 tasks
        assert spread["longest gap"] <= drawn["longest gap"] and (spread["longest gap"] < drawn["longest gap"]
                                                                  or task == "qqp")  # (QQP's drawn plan: at most 2)
        assert abs(spread["lateness"]) < 0.01 and spread["lr share"] == pytest.approx(1.0, abs=0.01)


def test_permutation_r_is_pearson_with_the_share_of_shuffles_as_extreme():
    x = np.array([1.0, 4.0, 2.0, 7.0, 5.0, 3.0, 6.0])
    r, p = placement.permutation_r(x, 3 * x - 2)
    assert r == pytest.approx(1.0) and p < 0.003  # 2 of the 7! orders give |r| = 1
    r, p = placement.permutation_r(x, -x)
    assert r == pytest.approx(-1.0) and p < 0.003
    y = np.array([0.3, -0.1, 0.4, 0.2, -0.5, 0.1, 0.0])
    r, p = placement.permutation_r(x, y)
    assert r == pytest.approx(np.corrcoef(x, y)[0, 1])
    # the exact p: the share of all 7! orders of y whose |r| reaches this one's
    exact = exact_p(x, y)
    assert p == pytest.approx(exact, abs=0.02) and 0.05 < exact < 0.95
    assert np.isnan(placement.permutation_r(x, np.ones(7))[0])  # a constant has no correlation


def exact_p(x, y):
    from itertools import permutations
    r = abs(np.corrcoef(x, y)[0, 1])
    rs = [abs(np.corrcoef(x, np.array(order))[0, 1]) for order in permutations(y)]
    return float(np.mean(np.array(rs) >= r - 1e-12))


def write_runs(root, data_dir, seeds, difference, epochs=1, rows=("spread", "plain"), batches=60, **settings):
    """Rows "spread" and "plain" (finished multitask runs of 60 batches, or `batches`); the spread
    row's score on each task is the plain row's plus difference(seed, task)."""
    for seed in seeds:
        config = TrainConfig(model="m", data_dir=str(data_dir), batches_per_epoch=batches, seed=seed, epochs=epochs,
                             **settings)
        for row in rows:
            folder = root / row / f"seed{seed}"
            folder.mkdir(parents=True)
            (folder / "train_config.json").write_text(json.dumps(config.to_dict()))
            scores = {metric: 0.5 + (difference(seed, task) if row == "spread" else 0.0)
                      for task, metric in placement.METRIC.items()}
            (folder / "final_metrics.json").write_text(json.dumps({**scores, "overall": 0.5}))


def test_the_command_correlates_each_seed_s_plan_with_the_rows_difference(tmp_path, capsys):
    data_dir = write_dataset(tmp_path / "data", train=96, dev=8, test=4)
    sizes = train_sizes(str(data_dir))

    def gap(seed, task):  # SST's and STS's differences: their longest gaps in the seed's drawn plan, on two scales
        longest = placement.placement(epoch_plan("annealed", sizes, 1, 1, 60, seed), task, np.ones(60))["longest gap"]
        return {"sst": longest / 1000, "qqp": 0.0, "sts": 0.1 + longest / 100}[task]

    write_runs(tmp_path / "runs", data_dir, range(5), gap)
    assert placement.main([str(tmp_path / "runs"), "spread", "plain", "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert out.count("| sst |") == out.count("| sts |") == 5
    gaps = [float(line.split("|")[4]) for line in out.splitlines() if line.startswith("| ") and "| sst |" in line]
    differences = [float(line.split("|")[3]) for line in out.splitlines() if "| sst |" in line]
    assert differences == pytest.approx([g / 1000 for g in gaps]) and len(set(gaps)) > 1
    (gap_line,) = [line for line in out.splitlines() if line.startswith("| longest gap |")]
    assert gap_line.split("|")[2].strip().startswith("+1.00")  # SST: r = 1 by construction
    assert "nan" in gap_line.split("|")[3]  # QQP: no difference on any seed, no correlation
    assert gap_line.split("|")[4].strip().startswith("+1.00")  # STS: r = 1 on its own scale
    # pooled: each task's gaps and differences standardised, then one r over the three tasks
    table = [line.split("|") for line in out.splitlines() if line.startswith("| ") and line.split("|")[2].strip() in
             ("sst", "qqp", "sts")]
    z = [np.concatenate([standardised([float(cells[column]) for cells in table if cells[2].strip() == task])
                         for task in ("sst", "qqp", "sts")]) for column in (4, 3)]
    pooled = float(gap_line.split("|")[5].split("(")[0])
    assert pooled == pytest.approx(np.corrcoef(*z)[0, 1], abs=0.006) and pooled < 0.99  # QQP dilutes it


def standardised(values):
    values = np.array(values)
    return (values - values.mean()) / values.std() if values.std() > 0 else values * 0.0


def test_a_cosine_row_s_sts_is_compared_with_the_single_task_run_of_its_head(tmp_path, capsys):
    data_dir = write_dataset(tmp_path / "data", train=96, dev=8, test=4)
    runs = tmp_path / "runs"
    write_runs(runs, data_dir, range(4), lambda seed, task: 0.4 + seed / 100, rows=("spread",),
               sts_head="cosine", paired_dropout=True)  # every score 0.9 + seed / 100
    for seed in range(4):
        for run, metric, value in (("sst", "sst_acc", 0.5), ("qqp", "qqp_acc", 0.5), ("sts", "sts_corr", 0.5),
                                   ("sts-cosine-paired", "sts_corr", 0.9)):
            if (seed, run) != (3, "sts-cosine-paired"):  # seed 3 has no single-task run of the cosine head
                (runs / "single" / f"seed{seed}" / run).mkdir(parents=True)
                (runs / "single" / f"seed{seed}" / run / "final_metrics.json").write_text(json.dumps({metric: value}))
    assert placement.main([str(runs), "spread", "single", "--data-dir", str(data_dir)]) == 0
    lines = [line.split("|") for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    sts = [(int(cells[1]), float(cells[3])) for cells in lines if cells[2].strip() == "sts"]
    assert sts == [(seed, pytest.approx(seed / 100)) for seed in range(3)]  # against 0.9; seed 3 left out
    sst = [float(cells[3]) for cells in lines if cells[2].strip() == "sst"]
    assert sst == pytest.approx([0.4 + seed / 100 for seed in range(4)])


def test_a_task_the_plan_gave_no_batch_has_no_placement_and_is_left_out_of_the_correlations(tmp_path, capsys):
    """A short plan can leave a task without a batch (the run still evaluates it): that seed's
    line for the task says so, and each correlation is over the seeds that placed the task."""
    assert placement.placement(["a", "a", "a"], "b", np.ones(3)) is None
    data_dir = write_dataset(tmp_path / "data", train=96, dev=8, test=4)
    sizes = train_sizes(str(data_dir))
    plans = {seed: epoch_plan("annealed", sizes, 1, 1, 4, seed) for seed in range(5)}
    unplanned = [(seed, task) for seed, plan in plans.items() for task in placement.METRIC if task not in plan]
    assert {task for _, task in unplanned} == {"sst", "qqp", "sts"}  # (4 batches: each task misses a seed)
    write_runs(tmp_path / "runs", data_dir, range(5), lambda seed, task: seed / 100, batches=4)
    assert placement.main([str(tmp_path / "runs"), "spread", "plain", "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    lines = [line.split("|") for line in out.splitlines()
             if line.startswith("| ") and line.split("|")[2].strip() in placement.METRIC]
    assert len(lines) == 15  # every seed's difference on every task, placed or not
    assert [(int(cells[1]), cells[2].strip()) for cells in lines if cells[4].strip() == "no batch"] == unplanned
    assert "no batch: the seed's plan gave the task no batch, so it has no placement" in out
    (gap_line,) = [line for line in out.splitlines() if line.startswith("| longest gap |")]
    for column, task in enumerate(("sst", "qqp", "sts"), 2):
        placed = 5 - sum(t == task for _, t in unplanned)
        assert gap_line.split("|")[column].strip().endswith(f"n={placed}")
    assert gap_line.split("|")[5].strip().endswith(f"n={15 - len(unplanned)}")  # pooled


def test_the_command_refuses_what_it_cannot_read(tmp_path, capsys):
    data_dir = write_dataset(tmp_path / "data", train=96, dev=8, test=4)
    runs = tmp_path / "runs"
    write_runs(runs, data_dir, range(2), lambda seed, task: 0.01 * seed)
    assert placement.main([str(runs), "spread", "plain", "--data-dir", str(data_dir)]) == 1
    assert "share fewer than 3 finished seeds" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        placement.main([str(runs), "spread", "nothing", "--data-dir", str(data_dir)])
    assert "nothing does not exist" in capsys.readouterr().err
    (runs / "single" / "seed0" / "sst").mkdir(parents=True)  # a single-task row holds no train_config.json
    with pytest.raises(SystemExit):
        placement.main([str(runs), "single", "plain", "--data-dir", str(data_dir)])
    assert "single/seed0/train_config.json is missing" in capsys.readouterr().err
    write_runs(tmp_path / "two-epochs", data_dir, range(3), lambda seed, task: 0.0, epochs=2)
    with pytest.raises(SystemExit):
        placement.main([str(tmp_path / "two-epochs"), "spread", "plain", "--data-dir", str(data_dir)])
    assert "one-epoch runs" in capsys.readouterr().err
    (tmp_path / "two-epochs" / "spread" / "seed0" / "train_config.json").write_text('{"seed": 0,')  # cut short
    with pytest.raises(SystemExit):
        placement.main([str(tmp_path / "two-epochs"), "spread", "plain", "--data-dir", str(data_dir)])
    assert "spread/seed0/train_config.json: not readable as JSON" in capsys.readouterr().err
    assert placement.main([str(runs), "spread", "plain", "--data-dir", str(tmp_path / "none")]) == 1
    assert "none/ids-sst-train.csv: dataset file not found" in capsys.readouterr().err
