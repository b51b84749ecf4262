#!/usr/bin/env bash
# Does one multitask model beat single-task models trained with the same steps? The ablation of
# issue 15, on a CPU with the offline all-MiniLM-L6-v2: 600 annealed batches of 32 (one epoch),
# each row for seeds 0, 1 and 2.
#
#   bash run_ablation.sh                 # or: bash run_experiments.sh ablation
#   SEEDS="0" ROWS="multi-tuned-concat single-tuned" bash run_ablation.sh     # a part of it
#
# Rows (ROWS picks some; all by default, in this order; every multitask row of the tuned recipe
# ran before --spread-tasks joined it, and says --no-spread-tasks unless its name ends in -spread):
#   single-tuned / single-paper   the single-task runs (SST; QQP with the joint and the siamese
#                                 paraphrase head; STS with the concat head, the cosine and the MNR head
#                                 (each with and without --paired-dropout), and the cosine head with
#                                 CoSENT), each with the number of batches its task gets in the
#                                 multitask run's plan (the same per-task steps)
#   single-tuned-head10           the same with the heads' learning rate 10 times the encoder's
#                                 (--head-lr-mult 10), the baseline of the -head10 rows
#   single-tuned-ls               the same with --label-smoothing 0.1, the baseline of multi-tuned-concat-ls
#   single-tuned-lld              the same with --layer-lr-decay 0.8, the baseline of the -lld rows
#   single-tuned-lld0.9           the same with --layer-lr-decay 0.9, the baseline of the -lld0.9 rows
#   single-tuned-avg10            the same with --average-last 0.1, the baseline of the -avg10 rows
#   single-tuned-drop0.1          the same with --dropout 0.1, the baseline of the -drop0.1 rows
#   pair-sst-qqp, pair-sst-sts, pair-qqp-sts   two tasks of three (tuned, concat), as many batches
#                                 as the two get in the three-task plan: which task hurts which
#   multi-paper-concat            the paper's recipe (annealed + concat)
#   multi-tuned-concat, multi-tuned-cosine, multi-tuned-mnr   the tuned recipe, three STS heads
#   multi-tuned-shared            the tuned recipe (concat) with --shared-layer (the paper's section 7)
#   multi-tuned-concat-equal-norm, multi-tuned-cosine-equal-norm    the tuned recipe with
#                                 --balance equal-norm (every task's encoder gradient brought to the
#                                 same running norm)
#   multi-tuned-concat-private1, multi-tuned-cosine-private1, multi-tuned-cosine-private2
#                                 the tuned recipe with --private-layers 1 or 2 (each task its own
#                                 copy of the encoder's top layer(s));
#   multi-tuned-cosine-private1-equal-norm   both together
#   multi-tuned-concat-private1-sst, multi-tuned-concat-private2-sst
#                                 --private-layers 1 or 2 --private-tasks sst: SST its own top
#                                 layer(s), paraphrase and similarity one copy between them
#   multi-tuned-cosine-private1-qqp   the cosine head with --private-layers 1 --private-tasks qqp
#                                 (its STS gradient agrees with SST's and conflicts with QQP's)
#   multi-tuned-cosine-project, multi-tuned-concat-project
#                                 the tuned recipe with --project-conflicts (PCGrad-style surgery)
#   multi-tuned-concat-moments, multi-tuned-cosine-moments
#                                 the tuned recipe with --task-moments (one AdamW per task)
#   multi-tuned-concat-schedules, multi-tuned-concat-schedules-moments
#                                 the tuned recipe with --task-schedules (each task's lr schedule over its
#                                 own steps), alone and with --task-moments
#   multi-tuned-concat-head10     the tuned recipe with --head-lr-mult 10
#   multi-tuned-concat-avg10      the tuned recipe with --average-last 0.1 (the mean of the weights over
#                                 the last tenth of the steps is evaluated and kept)
#   multi-tuned-concat-ls         the tuned recipe with --label-smoothing 0.1 (SST's and QQP's targets
#                                 smoothed: the teachers' soft targets without the teachers)
#   multi-tuned-concat-mix        the tuned recipe with --mix-tasks (each step one batch of several
#                                 tasks, their gradients added up; as many updates as QQP has batches)
#   multi-tuned-concat-spread     the tuned recipe with --spread-tasks (the plan's batches per task, each
#                                 task's spaced evenly over the epoch instead of where the draws put them)
#   multi-tuned-cosine-paired-private3-sts-equal-norm-spread   the best cosine row with --spread-tasks
#   multi-tuned-mnr-paired-private3-sts-equal-norm-spread   the best cosine row's levers with the MNR
#                                 head (in a one-epoch run its ranking loss throughout); compared on STS
#                                 with the single-task sts-mnr-paired run
#   multi-tuned-cosine-paired-private3-sts   the best cosine row without --balance equal-norm (STS's small
#                                 gradients left at their size on the shared lower layers)
#   multi-tuned-concat-pals, multi-tuned-cosine-paired-pals-equal-norm
#                                 --pals 96: each task its own projected attention layers of width 96 beside
#                                 every encoder layer (Stickland & Murray 2019), with the concat head, or
#                                 with the best cosine row's levers in place of its private top layer
#   <row>-bam (multi-tuned-concat-bam, multi-tuned-cosine-bam, multi-tuned-concat-head10-bam)
#                                 born-again distillation (--teachers): <row>, each task's targets
#                                 annealed from the single-task run of the same seed and recipe
#                                 (the row <row> is compared with: single-tuned, single-tuned-head10 for
#                                 a -head10 row, single-paper for the paper's; a cosine
#                                 row's STS teacher is its sts-cosine run, a cosent row's its
#                                 sts-cosent run, an mnr row's its sts-mnr run, each -paired where the
#                                 row is) to the gold labels; needs those single-task runs first
#   <row>-bam-<task>[-<task>] (multi-tuned-cosine-paired-private3-sts-equal-norm-bam-sst-qqp)
#                                 the same with teachers for the tasks named only; the others learn
#                                 from their gold labels alone
#   single-tuned-bam              born-again single-task runs: single-tuned's SST, QQP, STS (concat) and
#                                 STS (cosine, paired dropout) runs trained again, each with that run as its
#                                 teacher: single-task with the same distillation as a -bam row, to tell a
#                                 multitask effect of the teachers from what distillation gives any run
#   multi-tuned-cosent, multi-tuned-cosent-equal-norm
#                                 the cosine head trained with CoSENT (--sts-loss cosent, a ranking
#                                 loss), alone and with --balance equal-norm; compared with the
#                                 single-task sts-cosent run
#   multi-tuned-cosine-paired, multi-tuned-cosine-paired-equal-norm,
#   multi-tuned-cosine-paired-private1-equal-norm, multi-tuned-cosine-paired-private2-equal-norm
#                                 the cosine head with --paired-dropout (both sentences of a pair lose
#                                 the same units to the head's dropout), alone and with the best cosine
#                                 row's levers; compared on STS with the single-task sts-cosine-paired run
#   multi-tuned-cosine-siamese, multi-tuned-cosine-siamese-equal-norm, multi-tuned-concat-siamese
#                                 the siamese paraphrase head (--paraphrase-head siamese: each question
#                                 encoded alone), with the cosine head (alone and with --balance
#                                 equal-norm) or the concat head; compared on QQP with the single-task
#                                 qqp-siamese run
#   multi-tuned-concat-lr2e-4, multi-tuned-concat-lr5e-5
#                                 the tuned recipe (concat) at twice and half its learning rate
#   multi-tuned-concat-qqp1.5, multi-tuned-concat-qqp2
#                                 the tuned recipe with QQP's loss weighted 1.5 or 2 (--loss-weights)
#   multi-tuned-concat-sts0.5, multi-tuned-concat-sts0.7
#                                 the tuned recipe with STS's loss weighted 0.5 (0.7): under one AdamW the
#                                 same as SST's and QQP's weighted 2 (1/0.7) (a single-task run ignores a weight)
#   multi-tuned-concat-sst0.8-qqp0.8
#                                 SST's and QQP's losses weighted 0.8: their encoder gradients as small as
#                                 the teachers of multi-tuned-concat-bam-sst-qqp made them (about four
#                                 fifths), without the teachers; tells the gradients' size from the targets
#   multi-tuned-cosine-paired-private3-sts-equal-norm, multi-tuned-cosine-paired-private4-sts-equal-norm,
#   multi-tuned-cosine-paired-private5-sts-equal-norm
#                                 the cosine head with --private-layers 3 (4, 5) --private-tasks sts: STS its
#                                 own copy of the encoder's top three (four, five) layers, SST and QQP sharing all
#   multi-tuned-cosine-paired-private3-sts-equal-norm-schedules
#                                 the same (three) with --task-schedules: STS's k-th step at the learning rate of
#                                 step k of its single-task run
#   multi-tuned-cosine-paired-private3-sts-equal-norm-head10
#                                 the same (three) with --head-lr-mult 10; compared with single-tuned-head10
#   multi-tuned-concat-private3-sts, multi-tuned-concat-private5-sts
#                                 the concat head with STS's own top three (five) layers (--private-layers 3 (5)
#                                 --private-tasks sts), SST and QQP sharing all six
#   multi-tuned-concat-lld, multi-tuned-cosine-paired-private1-equal-norm-lld
#                                 --layer-lr-decay 0.8 (each encoder layer at 0.8 times the rate of the one
#                                 above), with the concat head or with the cosine rows' levers
#   multi-tuned-concat-lld0.9     the concat head with --layer-lr-decay 0.9 (the embeddings at 0.9^6 = 0.53
#                                 of --lr, against 0.8^6 = 0.26)
#   multi-tuned-concat-drop0.1    the concat head with --dropout 0.1 before every task head (BERT's own
#                                 classifier dropout) in place of the paper's 0.3
#   multi-tuned-concat-qqp-from-sts   the tuned recipe with --paraphrase-from-sts 1: every STS batch
#                                 also trains the paraphrase head on its pairs (scored >= 4: a
#                                 paraphrase; <= 2: not), from the same pair encoding
#   lever-sts-weight, lever-mean-pooling, lever-linear-warmup, lever-lr-1e-4, lever-uncertainty
#                                 the paper's recipe with one lever of the tuned one (or the learned
#                                 task weights) switched on
#   lever-lr-1e-4-linear          the paper's recipe with the tuned learning rate and its schedule
#                                 together (lr 1e-4, 10% warmup, linear decay)
#
# Each run trains into RUNS_DIR/<row>/seed<k>[/<task>]/ (RUNS_DIR defaults to runs/ablation); a
# finished run (final_metrics.json) is skipped, so the same command carries on after a stop. At
# the end `python -m multitask.ablation RUNS_DIR` writes the table (mean and spread per task).
# Arguments go to every multitask_classifier.py call (not those that fix a run's steps: --epochs,
# --sampler, --batches-per-epoch, --seed, --tasks; --max-train-examples N also caps the task sizes
# the single-task runs' steps are counted from). Environment: MODEL, DATA_DIR, RUNS_DIR,
# SEEDS, ROWS, PYTHON, and SINGLE_RUNS: which runs a single-* row trains (all nine by default:
# sst qqp qqp-siamese sts sts-cosine sts-cosine-paired sts-cosent sts-mnr sts-mnr-paired), e.g.
# "sst qqp sts". Every row in ROWS is checked before the first run; LIST_ROWS=1 prints each row's
# flags and stops (a single-task row's: its recipe and lever, given to each of its runs).
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"
export PYTHONPATH="$script_dir${PYTHONPATH:+:$PYTHONPATH}"
model="${MODEL:-sentence-transformers/all-MiniLM-L6-v2}"
offline="$script_dir/../shared/data"  # the offline copy beside the checkout, where there is one
[[ -d "$offline" ]] || offline="$script_dir/data"
data_dir="${DATA_DIR:-$offline}"
runs_dir="${RUNS_DIR:-runs/ablation}"
batches="${BATCHES:-600}"
seeds=(${SEEDS:-0 1 2})
all_rows=(single-tuned multi-tuned-concat multi-tuned-cosine multi-paper-concat single-paper
          lever-sts-weight lever-mean-pooling lever-linear-warmup lever-lr-1e-4 lever-uncertainty lever-lr-1e-4-linear
          multi-tuned-mnr multi-tuned-shared multi-tuned-concat-equal-norm multi-tuned-cosine-equal-norm
          multi-tuned-concat-private1 multi-tuned-cosine-private1 multi-tuned-cosine-private2
          multi-tuned-cosine-project multi-tuned-concat-project multi-tuned-cosine-private1-equal-norm
          multi-tuned-concat-moments multi-tuned-cosine-moments multi-tuned-concat-qqp1.5 multi-tuned-concat-qqp2
          multi-tuned-concat-sts0.5 multi-tuned-concat-sts0.7 multi-tuned-concat-sst0.8-qqp0.8
          multi-tuned-concat-schedules multi-tuned-concat-schedules-moments
          pair-sst-qqp pair-sst-sts pair-qqp-sts single-tuned-head10 multi-tuned-concat-head10
          multi-tuned-concat-private1-sst multi-tuned-concat-private2-sst multi-tuned-cosine-private1-qqp
          multi-tuned-concat-bam multi-tuned-cosine-bam multi-tuned-concat-head10-bam
          multi-tuned-cosent multi-tuned-cosent-equal-norm
          multi-tuned-concat-lr2e-4 multi-tuned-concat-lr5e-5
          multi-tuned-cosine-siamese multi-tuned-cosine-siamese-equal-norm multi-tuned-concat-siamese
          multi-tuned-cosine-paired multi-tuned-cosine-paired-equal-norm multi-tuned-cosine-paired-private1-equal-norm
          multi-tuned-cosine-paired-private2-equal-norm single-tuned-bam single-tuned-ls multi-tuned-concat-ls
          multi-tuned-concat-mix multi-tuned-concat-pals multi-tuned-cosine-paired-pals-equal-norm
          multi-tuned-concat-qqp-from-sts single-tuned-lld multi-tuned-concat-lld
          multi-tuned-cosine-paired-private1-equal-norm-lld single-tuned-lld0.9 multi-tuned-concat-lld0.9
          single-tuned-drop0.1 multi-tuned-concat-drop0.1
          multi-tuned-cosine-paired-private3-sts-equal-norm multi-tuned-cosine-paired-private4-sts-equal-norm
          multi-tuned-cosine-paired-private5-sts-equal-norm multi-tuned-cosine-paired-private3-sts-equal-norm-schedules
          multi-tuned-cosine-paired-private3-sts-equal-norm-head10 multi-tuned-concat-private3-sts
          multi-tuned-concat-private5-sts multi-tuned-concat-spread
          multi-tuned-cosine-paired-private3-sts-equal-norm-spread multi-tuned-cosine-paired-private3-sts
          multi-tuned-mnr-paired-private3-sts-equal-norm-spread)
rows=(${ROWS:-${all_rows[@]}})
# The arguments go to every run, after the script's own. Those that fix which steps a run takes
# are the script's: given here, a run would take them and its single-task partners would still
# train the steps of the script's plan. --max-train-examples changes the plan's task sizes, so
# the plan's counts take it too.
plan_args=()
for (( i = 1; i <= $#; i++ )); do
    arg="${!i}"
    case "$arg" in
        --epochs|--epochs=*|--sampler|--sampler=*|--batches-per-epoch|--batches-per-epoch=*|--seed|--seed=*|\
        --tasks|--tasks=*|--out-dir|--out-dir=*|--resume|--resume=*)
            echo "error: run_ablation.sh sets ${arg%%=*} itself (one epoch of BATCHES annealed batches, the seeds" \
                 "in SEEDS, the tasks and folders of each row); leave it out of the arguments" >&2
            exit 2 ;;
        --max-train-examples=*) plan_args=("$arg") ;;
        --max-train-examples) j=$(( i + 1 )); plan_args=("$arg" "${!j:-}") ;;
    esac
done
# fp32 on every CPU, so that rows run on a CPU with native bf16 (where --precision auto picks bf16)
# stay comparable with rows run on one without; an argument --precision overrides it.
common=(--model "$model" --data-dir "$data_dir" --epochs 1 --sampler annealed --batch-size 32
        --device cpu --precision fp32 --no-progress "$@")

row_flags() {  # the flags of a multitask row
    local flags
    flags="$(row_recipe "$1")" || return 2
    # Every tuned row ran before --spread-tasks joined the tuned recipe: those that do not say
    # --spread-tasks get --no-spread-tasks, and keep meaning what they measured.
    [[ "$flags" != "--recipe tuned "* || "$flags" == *--spread-tasks* ]] || flags+=" --no-spread-tasks"
    echo "$flags"
}

row_recipe() {  # a multitask row's recipe and levers, as the row was named
    # The rows with a head that reads the two sentences of a pair alone (cosine, mnr, siamese) that
    # ran before paired dropout joined the tuned recipe say --no-paired-dropout: they keep meaning
    # what they measured.
    case "$1" in
        multi-paper-concat) echo "--recipe paper --sts-head concat" ;;
        multi-tuned-concat) echo "--recipe tuned --sts-head concat" ;;
        multi-tuned-cosine) echo "--recipe tuned --sts-head cosine --no-paired-dropout" ;;
        multi-tuned-mnr) echo "--recipe tuned --sts-head mnr --no-paired-dropout" ;;
        multi-tuned-shared) echo "--recipe tuned --sts-head concat --shared-layer" ;;
        multi-tuned-concat-equal-norm) echo "--recipe tuned --sts-head concat --balance equal-norm" ;;
        multi-tuned-cosine-equal-norm) echo "--recipe tuned --sts-head cosine --balance equal-norm --no-paired-dropout" ;;
        multi-tuned-concat-private1) echo "--recipe tuned --sts-head concat --private-layers 1" ;;
        multi-tuned-cosine-private1) echo "--recipe tuned --sts-head cosine --private-layers 1 --no-paired-dropout" ;;
        multi-tuned-concat-private1-sst) echo "--recipe tuned --sts-head concat --private-layers 1 --private-tasks sst" ;;
        multi-tuned-concat-private2-sst) echo "--recipe tuned --sts-head concat --private-layers 2 --private-tasks sst" ;;
        multi-tuned-cosine-private1-qqp) echo "--recipe tuned --sts-head cosine --private-layers 1 --private-tasks qqp --no-paired-dropout" ;;
        multi-tuned-cosine-private2) echo "--recipe tuned --sts-head cosine --private-layers 2 --no-paired-dropout" ;;
        multi-tuned-cosine-private1-equal-norm) echo "--recipe tuned --sts-head cosine --private-layers 1 --balance equal-norm --no-paired-dropout" ;;
        multi-tuned-cosine-paired) echo "--recipe tuned --sts-head cosine --paired-dropout" ;;
        multi-tuned-cosine-paired-equal-norm) echo "--recipe tuned --sts-head cosine --paired-dropout --balance equal-norm" ;;
        multi-tuned-cosine-paired-private1-equal-norm) echo "--recipe tuned --sts-head cosine --paired-dropout --private-layers 1 --balance equal-norm" ;;
        multi-tuned-cosine-paired-private2-equal-norm) echo "--recipe tuned --sts-head cosine --paired-dropout --private-layers 2 --balance equal-norm" ;;
        multi-tuned-cosine-siamese) echo "--recipe tuned --sts-head cosine --paraphrase-head siamese --no-paired-dropout" ;;
        multi-tuned-cosine-siamese-equal-norm) echo "--recipe tuned --sts-head cosine --paraphrase-head siamese --balance equal-norm --no-paired-dropout" ;;
        multi-tuned-concat-siamese) echo "--recipe tuned --sts-head concat --paraphrase-head siamese --no-paired-dropout" ;;
        multi-tuned-cosine-project) echo "--recipe tuned --sts-head cosine --project-conflicts --no-paired-dropout" ;;
        multi-tuned-concat-project) echo "--recipe tuned --sts-head concat --project-conflicts" ;;
        multi-tuned-concat-moments) echo "--recipe tuned --sts-head concat --task-moments" ;;
        multi-tuned-cosine-moments) echo "--recipe tuned --sts-head cosine --task-moments --no-paired-dropout" ;;
        multi-tuned-cosent) echo "--recipe tuned --sts-head cosine --sts-loss cosent --no-paired-dropout" ;;
        multi-tuned-cosent-equal-norm) echo "--recipe tuned --sts-head cosine --sts-loss cosent --balance equal-norm --no-paired-dropout" ;;
        multi-tuned-concat-schedules) echo "--recipe tuned --sts-head concat --task-schedules" ;;
        multi-tuned-concat-schedules-moments) echo "--recipe tuned --sts-head concat --task-schedules --task-moments" ;;
        multi-tuned-concat-lr2e-4) echo "--recipe tuned --sts-head concat --lr 2e-4" ;;
        multi-tuned-concat-lr5e-5) echo "--recipe tuned --sts-head concat --lr 5e-5" ;;
        multi-tuned-concat-head10) echo "--recipe tuned --sts-head concat --head-lr-mult 10" ;;
        multi-tuned-concat-avg10) echo "--recipe tuned --sts-head concat --average-last 0.1" ;;
        multi-tuned-concat-ls) echo "--recipe tuned --sts-head concat --label-smoothing 0.1" ;;
        multi-tuned-concat-mix) echo "--recipe tuned --sts-head concat --mix-tasks" ;;
        multi-tuned-concat-spread) echo "--recipe tuned --sts-head concat --spread-tasks" ;;
        multi-tuned-cosine-paired-private3-sts-equal-norm-spread) echo "--recipe tuned --sts-head cosine --paired-dropout --private-layers 3 --private-tasks sts --balance equal-norm --spread-tasks" ;;
        multi-tuned-concat-pals) echo "--recipe tuned --sts-head concat --pals 96" ;;
        multi-tuned-cosine-paired-pals-equal-norm) echo "--recipe tuned --sts-head cosine --paired-dropout --pals 96 --balance equal-norm" ;;
        multi-tuned-concat-qqp1.5) echo "--recipe tuned --sts-head concat --loss-weights qqp=1.5" ;;
        multi-tuned-concat-qqp2) echo "--recipe tuned --sts-head concat --loss-weights qqp=2" ;;
        multi-tuned-concat-sts0.5) echo "--recipe tuned --sts-head concat --loss-weights sts=0.5" ;;
        multi-tuned-concat-sts0.7) echo "--recipe tuned --sts-head concat --loss-weights sts=0.7" ;;
        multi-tuned-concat-sst0.8-qqp0.8) echo "--recipe tuned --sts-head concat --loss-weights sst=0.8,qqp=0.8" ;;
        multi-tuned-concat-qqp-from-sts) echo "--recipe tuned --sts-head concat --paraphrase-from-sts 1" ;;
        multi-tuned-concat-private3-sts) echo "--recipe tuned --sts-head concat --private-layers 3 --private-tasks sts" ;;
        multi-tuned-concat-private5-sts) echo "--recipe tuned --sts-head concat --private-layers 5 --private-tasks sts" ;;
        multi-tuned-mnr-paired-private3-sts-equal-norm-spread) echo "--recipe tuned --sts-head mnr --paired-dropout --private-layers 3 --private-tasks sts --balance equal-norm --spread-tasks" ;;
        multi-tuned-cosine-paired-private3-sts) echo "--recipe tuned --sts-head cosine --paired-dropout --private-layers 3 --private-tasks sts" ;;
        multi-tuned-cosine-paired-private3-sts-equal-norm) echo "--recipe tuned --sts-head cosine --paired-dropout --private-layers 3 --private-tasks sts --balance equal-norm" ;;
        multi-tuned-cosine-paired-private4-sts-equal-norm) echo "--recipe tuned --sts-head cosine --paired-dropout --private-layers 4 --private-tasks sts --balance equal-norm" ;;
        multi-tuned-cosine-paired-private5-sts-equal-norm) echo "--recipe tuned --sts-head cosine --paired-dropout --private-layers 5 --private-tasks sts --balance equal-norm" ;;
        multi-tuned-cosine-paired-private3-sts-equal-norm-schedules) echo "--recipe tuned --sts-head cosine --paired-dropout --private-layers 3 --private-tasks sts --balance equal-norm --task-schedules" ;;
        multi-tuned-cosine-paired-private3-sts-equal-norm-head10) echo "--recipe tuned --sts-head cosine --paired-dropout --private-layers 3 --private-tasks sts --balance equal-norm --head-lr-mult 10" ;;
        multi-tuned-concat-lld) echo "--recipe tuned --sts-head concat --layer-lr-decay 0.8" ;;
        multi-tuned-concat-lld0.9) echo "--recipe tuned --sts-head concat --layer-lr-decay 0.9" ;;
        multi-tuned-concat-drop0.1) echo "--recipe tuned --sts-head concat --dropout 0.1" ;;
        multi-tuned-cosine-paired-private1-equal-norm-lld) echo "--recipe tuned --sts-head cosine --paired-dropout --private-layers 1 --balance equal-norm --layer-lr-decay 0.8" ;;
        lever-sts-weight) echo "--recipe paper --sts-head concat --sts-loss-scale unit" ;;
        lever-mean-pooling) echo "--recipe paper --sts-head concat --pooling mean" ;;
        lever-linear-warmup) echo "--recipe paper --sts-head concat --lr-schedule linear --warmup 0.1" ;;
        lever-lr-1e-4) echo "--recipe paper --sts-head concat --lr 1e-4" ;;
        lever-lr-1e-4-linear) echo "--recipe paper --sts-head concat --lr 1e-4 --lr-schedule linear --warmup 0.1" ;;
        lever-uncertainty) echo "--recipe paper --sts-head concat --balance uncertainty" ;;
        *) echo "error: unknown row $1" >&2; return 2 ;;
    esac
}

single_lever() {  # single-<recipe>[-<lever>][-bam]: prints "<recipe> <the lever's flags>"; fails on
                  # another name (the one place that knows the single-task levers)
    local rest="${1#single-}" recipe lever
    rest="${rest%-bam}"; recipe="${rest%%-*}"; lever="${rest#"$recipe"}"
    [[ "$recipe" == tuned || "$recipe" == paper ]] || return 2
    case "$lever" in
        "") echo "$recipe" ;;
        -head10) echo "$recipe --head-lr-mult 10" ;;
        -ls) echo "$recipe --label-smoothing 0.1" ;;
        -lld) echo "$recipe --layer-lr-decay 0.8" ;;
        -lld0.9) echo "$recipe --layer-lr-decay 0.9" ;;
        -avg10) echo "$recipe --average-last 0.1" ;;
        -drop0.1) echo "$recipe --dropout 0.1" ;;
        *) return 2 ;;
    esac
}

base_row() {  # a multitask row without its -bam suffix: the row whose flags it trains with
    echo "${1%-bam*}"
}

teacher_tasks() {  # the tasks of a multitask row that get teachers: <row>-bam every task,
                   # <row>-bam-sst-qqp those named; none for another row
    case "$1" in
        *-bam) echo "sst qqp sts" ;;
        *-bam-*) local named="${1##*-bam-}"; echo "${named//-/ }" ;;
    esac
}

known_teachers() {  # a row's -bam-<task>[-<task>] suffix names tasks of the three, each once
    local tasks task
    [[ "$1" == *-bam* ]] || return 0
    tasks=" $(teacher_tasks "$1") "
    [[ -n "${tasks// /}" ]] || return 1
    for task in $tasks; do
        [[ " sst qqp sts " == *" $task "* && "${tasks/ $task / }" != *" $task "* ]] || return 1
    done
}

check_row() {  # a row's name, checked before the first run (misspelt, a multitask row would train the
               # default recipe under that name; a single-task one would fail hours in)
    local row="$1" rest
    case "$row" in
        single-*)
            single_lever "$row" > /dev/null ;;
        pair-*)
            [[ " pair-sst-qqp pair-sst-sts pair-qqp-sts " == *" $row "* ]] ;;
        *)
            row_flags "$(base_row "$row")" > /dev/null 2>&1 && known_teachers "$row" ;;
    esac || { echo "error: ROWS names an unknown row '$row'; the rows are listed at the top of run_ablation.sh" >&2
              return 2; }
}

for row in "${rows[@]}"; do check_row "$row" || exit 2; done
single_runs="sst qqp qqp-siamese sts sts-cosine sts-cosine-paired sts-cosent sts-mnr sts-mnr-paired"  # what a single-* row trains
for run in ${SINGLE_RUNS:-}; do  # a misspelt run would be skipped without a word
    [[ " $single_runs " == *" $run "* ]] || {
        echo "error: SINGLE_RUNS names an unknown run '$run'; the runs: $single_runs" >&2; exit 2; }
done
if [[ -n "${LIST_ROWS:-}" ]]; then  # print each row and its flags, one a line, and stop
    for row in "${rows[@]}"; do
        if [[ "$row" == single-* ]]; then
            read -r recipe extra_flags < <(single_lever "$row")
            printf '%s\t%s\n' "$row" "--recipe $recipe${extra_flags:+ $extra_flags}"
        elif [[ "$row" != pair-* ]]; then
            printf '%s\t%s\n' "$row" "$(row_flags "$(base_row "$row")")"
        fi
    done
    exit 0
fi

train() {  # train OUT_DIR FLAGS...: one run, skipped when finished, resumed when interrupted
    local out="$1"; shift
    if [[ "$row" == single-* && -n "${SINGLE_RUNS:-}" && " $SINGLE_RUNS " != *" ${out##*/} "* ]]; then
        return 0  # a single-task run that SINGLE_RUNS leaves out (row: the loop's current row)
    fi
    if [[ " $* " == *" --batches-per-epoch 0 "* ]]; then
        echo "skip $out (its task has no batch in the multitask plan)"; return 0
    fi
    if [[ -f "$out/final_metrics.json" ]]; then
        echo "skip $out (finished)"; return 0
    fi
    local again=(--overwrite)
    [[ -f "$out/checkpoint.pt" ]] && again=(--resume "$out")
    mkdir -p "$out"
    echo "=== $out: $*"
    "$PYTHON" "$script_dir/multitask_classifier.py" "${common[@]}" "$@" --out-dir "$out" "${again[@]}" \
        > "$out/train.log" 2>&1 || { echo "error: $out failed; see $out/train.log" >&2; return 1; }
    tail -n 1 "$out/train.log"
}

for row in "${rows[@]}"; do  # row by row, so that the first rows have all their seeds first
    for seed in "${seeds[@]}"; do
        out="$runs_dir/$row/seed$seed"
        if [[ "$row" == single-* || "$row" == pair-* ]]; then
            # Each task's share of the multitask plan of this seed: the same per-task steps.
            read -r n_sst n_qqp n_sts < <("$PYTHON" -m multitask.ablation --plan-counts \
                --data-dir "$data_dir" --batches "$batches" --seed "$seed" ${plan_args[@]+"${plan_args[@]}"}) || true
            [[ -n "${n_sts:-}" ]] || { echo "error: could not count the plan's batches per task (above)" >&2; exit 2; }
        fi
        if [[ "$row" == single-* ]]; then  # single-<recipe>[-<lever>][-bam]: its recipe and lever
            base="${row%-bam}"
            read -r recipe extra_flags < <(single_lever "$row")
            read -r -a extra <<< "$extra_flags"
        fi
        if [[ "$row" == pair-* ]]; then
            # Two tasks, drawn by the same sampler: each gets about its three-task share.
            a="${row#pair-}"; b="${a#*-}"; a="${a%-*}"
            declare -A n=([sst]="$n_sst" [qqp]="$n_qqp" [sts]="$n_sts")
            train "$out" --recipe tuned --no-spread-tasks --sts-head concat --tasks "$a,$b" \
                --batches-per-epoch "$(( n[$a] + n[$b] ))" --seed "$seed"
        elif [[ "$row" == single-*-bam ]]; then
            # Born-again single-task runs (Furlanello et al. 2018): each single-task run of the
            # row without -bam trained again, the same way, with itself as its teacher. A -bam
            # multitask row compared with these is measured against the same distillation.
            single="$runs_dir/$base/seed$seed"
            for run in sst qqp sts sts-cosine-paired; do
                [[ -f "$single/$run/final_metrics.json" ]] || {
                    echo "error: $row needs the finished run $single/$run: run the $base row first" >&2; exit 1; }
            done
            train "$out/sst" --recipe "$recipe" "${extra[@]}" --tasks sst --batches-per-epoch "$n_sst" --seed "$seed" \
                --teachers "sst=$single/sst"
            train "$out/qqp" --recipe "$recipe" "${extra[@]}" --tasks qqp --batches-per-epoch "$n_qqp" --seed "$seed" \
                --teachers "qqp=$single/qqp"
            train "$out/sts" --recipe "$recipe" "${extra[@]}" --tasks sts --sts-head concat --batches-per-epoch "$n_sts" \
                --seed "$seed" --teachers "sts=$single/sts"
            train "$out/sts-cosine-paired" --recipe "$recipe" "${extra[@]}" --tasks sts --sts-head cosine --paired-dropout \
                --batches-per-epoch "$n_sts" --seed "$seed" --teachers "sts=$single/sts-cosine-paired"
        elif [[ "$row" == single-* ]]; then
            train "$out/sst" --recipe "$recipe" "${extra[@]}" --tasks sst --batches-per-epoch "$n_sst" --seed "$seed"
            train "$out/qqp" --recipe "$recipe" "${extra[@]}" --tasks qqp --batches-per-epoch "$n_qqp" --seed "$seed"
            # (--no-paired-dropout: these ran before paired dropout joined the tuned recipe; kept as they ran)
            train "$out/qqp-siamese" --recipe "$recipe" "${extra[@]}" --tasks qqp --paraphrase-head siamese --no-paired-dropout \
                --batches-per-epoch "$n_qqp" --seed "$seed"
            train "$out/sts" --recipe "$recipe" "${extra[@]}" --tasks sts --sts-head concat --batches-per-epoch "$n_sts" --seed "$seed"
            # The sentence-embedding heads alone, without and with paired dropout: the baselines of the
            # cosine and mnr rows (the MNR head's one-epoch run trains its ranking loss throughout).
            for head in cosine mnr; do
                train "$out/sts-$head" --recipe "$recipe" "${extra[@]}" --tasks sts --sts-head "$head" --no-paired-dropout \
                    --batches-per-epoch "$n_sts" --seed "$seed"
                train "$out/sts-$head-paired" --recipe "$recipe" "${extra[@]}" --tasks sts --sts-head "$head" --paired-dropout \
                    --batches-per-epoch "$n_sts" --seed "$seed"
            done
            train "$out/sts-cosent" --recipe "$recipe" "${extra[@]}" --tasks sts --sts-head cosine --sts-loss cosent --no-paired-dropout \
                --batches-per-epoch "$n_sts" --seed "$seed"
        elif taught="$(teacher_tasks "$row")"; [[ -n "$taught" ]]; then
            # The teachers: this seed's single-task runs (the same per-task steps, the same recipe).
            base="$(base_row "$row")"; single_row="$("$PYTHON" -m multitask.ablation --own-baseline "$row")"
            single="$runs_dir/$single_row/seed$seed"
            # Each task's teacher is the run its scores are compared with (multitask/ablation.py,
            # baseline_runs): the single-task run of the same head, loss and dropout.
            runs="$("$PYTHON" -m multitask.ablation --baseline-runs="$(row_flags "$base")")" || exit 1
            declare -A teacher=()
            for task_run in $runs; do
                teacher[${task_run%%=*}]="$single/${task_run#*=}"
            done
            teachers=""
            for task in $taught; do
                [[ -f "${teacher[$task]}/final_metrics.json" ]] || {
                    echo "error: $row needs the finished run ${teacher[$task]}: run the $single_row row first" >&2
                    exit 1; }
                teachers+="${teachers:+,}$task=${teacher[$task]}"
            done
            # shellcheck disable=SC2046
            train "$out" $(row_flags "$base") --batches-per-epoch "$batches" --seed "$seed" --teachers "$teachers"
        else
            # shellcheck disable=SC2046
            train "$out" $(row_flags "$row") --batches-per-epoch "$batches" --seed "$seed"
        fi
    done
done

# Each multitask row is compared with the single-task runs of its own recipe and lever where it has
# them (multitask.ablation's own_baseline: the paper's row with single-paper, a -head10 row with
# single-tuned-head10, ...), else with single-tuned.
"$PYTHON" -m multitask.ablation "$runs_dir"
