#!/usr/bin/env bash
# metaseg's entry script.
# * With FSS-1000 shards (fewshot_shards/) and the paper's checkpoint
#   (EfficientLab-6-3_FOMAML-star_checkpoint/) present: the paper's SOTA evaluation.
# * Otherwise: the built-in CPU demo, end to end (about 12-15 minutes on 2 cores): draw a small
#   synthetic few-shot dataset, convert it, meta-train EfficientLab at 64 px, and compare the
#   meta-learned init with a random init under the same test-time adaptation on held-out classes.
# Sets up .venv/ on first use (pip install -r requirements.txt), then uses .venv/bin/python.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/ensure_venv.sh
PY=.venv/bin/python

# ===================== PAPER BRANCH (SOTA evaluation, FSS-1000) =====================
# Exact text supplied by the checkpoint engineer / lead; the flags are the paper's run.sh line.
if [ -d fewshot_shards ] && [ -e EfficientLab-6-3_FOMAML-star_checkpoint ]; then
  exec "$PY" run_metasegnet.py --fss_1000 --image_size 224 --pretrained --rsd 2 4 --l2 \
    --foml --foml-tail 5 --final_layer_dropout_rate 0.5 --augment --aug_rate 0.5 --sgd \
    --loss_name bce_dice --inner-batch 8 --learning-rate 0.0005 --train-shots 10 \
    --inner-iters 59 --learning_rate_scheduler fixed --meta-iters 50000 --meta-batch 5 \
    --eval-interval 500 --serially_eval_all_test_tasks --eval-samples 2 --shots 5 \
    --eval-batch 8 --eval-iters 59 --transductive --model_name efficientlab --meta-step 0.1 \
    --meta-step-final 0.00001 --checkpoint EfficientLab-6-3_FOMAML-star_checkpoint \
    --data-dir fewshot_shards/ "$@"
fi

# ===================== DEMO BRANCH (CPU, no downloads) =====================
DEMO_SIZE=64
echo "== metaseg demo: FSS-1000 not found, running the synthetic CPU demo ==" >&2
"$PY" -m data.demo --out_dir demo_data --num_classes 120 --images_per_class 10 \
  --image_size "$DEMO_SIZE" --seed 0
"$PY" fss_1000_image_to_tfrecord.py --input_dir demo_data --tfrecord_dir demo_shards \
  --image_size "$DEMO_SIZE"
# A fresh run each time (rerunning the same run_metasegnet.py command would otherwise resume).
rm -rf demo_runs/reptile
"$PY" run_metasegnet.py --data-dir demo_shards --image_size "$DEMO_SIZE" --num_test_tasks 20 \
  --checkpoint demo_runs/reptile --compare_random_init --seed 0 \
  --rsd 2 4 --loss_name bce_dice --learning-rate 0.001 --inner-batch 8 --inner-iters 5 \
  --train-shots 5 --meta-batch 2 --meta-iters 150 --meta-step 1.0 --meta-step-final 0.1 \
  --eval-interval 50 --monitor_tasks 5 --shots 5 --eval-batch 8 --eval-iters 20 \
  --eval-samples 1 --serially_eval_all_test_tasks --transductive "$@"
