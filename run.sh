#!/usr/bin/env bash
# metaseg's entry script.
# * With FSS-1000 shards (fewshot_shards/) and the paper's checkpoint
#   (EfficientLab-6-3_FOMAML-star_checkpoint/) present: the paper's SOTA evaluation.
# * Otherwise: the built-in CPU demo, end to end (about 16 minutes on 2 cores): draw a small
#   synthetic few-shot dataset, convert it, meta-train EfficientLab at 64 px with Reptile and with
#   FOMAML*, and compare both meta-learned inits with a random init under the same test-time
#   adaptation on held-out classes. METASEG_DEMO=mtl ./run.sh runs the MTL U-Net demo instead.
# Sets up .venv/ on first use (pip install -r requirements.txt), then uses .venv/bin/python.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/ensure_venv.sh
PY=.venv/bin/python

# ===================== PAPER BRANCH (SOTA evaluation, FSS-1000) =====================
# The flags of the paper's run.sh line (ml4ai/mliis run.sh), unchanged.
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
# METASEG_DEMO=meta (default): Reptile and FOMAML* meta-train EfficientLab at 64 px on 90 demo
#   classes (10 more select nothing but are monitored as val), then adapt 20 steps on 5 shots of
#   each of 20 held-out classes; a table compares both inits with a random init.
# METASEG_DEMO=mtl: the meta-transfer-learning pipeline's three phases at 64 px:
#   pre_train (plain U-Net on the pooled meta-train classes) -> meta_train (frozen kernels,
#   scale/shift + head init meta-learned) -> meta_eval (head adapted on each held-out class),
#   reported next to the pre-trained U-Net adapted the same way. The same three commands at full
#   size, on FSS-1000 shards:
#     run_metasegnet.py --model_name mtl_unet --phase pre_train  --checkpoint RUN --data-dir SHARDS
#     run_metasegnet.py --model_name mtl_unet --phase meta_train --checkpoint RUN --data-dir SHARDS \
#       --init_weights RUN/pre_train
#     run_metasegnet.py --model_name mtl_unet --phase meta_eval  --checkpoint RUN --data-dir SHARDS \
#       --eval_weights RUN/meta_train --init_weights RUN/pre_train
# Extra arguments are passed to every run_metasegnet.py call (e.g. ./run.sh --meta-iters 20).
DEMO="${METASEG_DEMO:-meta}"
DEMO_SIZE=64
case "$DEMO" in meta|mtl) ;; *) echo "run.sh: METASEG_DEMO must be 'meta' or 'mtl'. Received: '$DEMO'" >&2; exit 2;; esac
SPLIT=(--data-dir demo_shards --image_size "$DEMO_SIZE" --num_test_tasks 20 --num_val_tasks 10
       --seed 0)
# Read by every mode; the meta-learning runs also take EVAL (the MTL phases name them otherwise).
MONITOR=(--eval-samples 1 --serially_eval_all_test_tasks --transductive --monitor_tasks 5)
EVAL=(--shots 5 --eval-batch 8 --eval-iters 20 --eval-interval 50)
MTL=(--model_name mtl_unet --checkpoint demo_runs/mtl --n_unet_encoding_stacks 3
     --start_num_feature_maps_power 4 --loss_name ce_dice --shot 5 --train_query 2 --val_query 2)
INNER=(--rsd 2 4 --loss_name bce_dice --learning-rate 0.001 --inner-batch 8 --inner-iters 5
       --train-shots 5 --meta-batch 2 --meta-iters 100)
REPTILE=("${SPLIT[@]}" "${MONITOR[@]}" "${EVAL[@]}" "${INNER[@]}" --checkpoint demo_runs/reptile
         --meta-step 1.0 --meta-step-final 0.1 --compare_random_init "$@")
FOMAML_STAR=("${SPLIT[@]}" "${MONITOR[@]}" "${EVAL[@]}" "${INNER[@]}"
             --checkpoint demo_runs/fomaml_star --foml --foml-tail 2 --meta-step 3.0
             --meta-step-final 0.3 "$@")
PRE_TRAIN=("${SPLIT[@]}" "${MONITOR[@]}" "${MTL[@]}" --phase pre_train --pre_max_epoch 6
           --pre_batch_size 16 --pre_lr 0.05 --pre_step_size 4 "$@")
META_TRAIN=("${SPLIT[@]}" "${MONITOR[@]}" "${MTL[@]}" --phase meta_train
            --init_weights demo_runs/mtl/pre_train --max_epoch 4 --num_batch 25 --update_step 20
            --step_size 2 "$@")
META_EVAL=("${SPLIT[@]}" "${MONITOR[@]}" "${MTL[@]}" --phase meta_eval
           --eval_weights demo_runs/mtl/meta_train --init_weights demo_runs/mtl/pre_train
           --teshot 5 --test_query 5 --update_step 20 "$@")
# Every command line is checked before anything is deleted: first its flags (before the data is
# drawn), then against the drawn data (--image_size against the shards, the split, the class
# sizes). A refusal stops here with run_metasegnet.py's one-line error and a line naming the demo
# line that refused it; the previous demo's runs are left as they were.
if [ "$DEMO" = mtl ]; then LINES=(PRE_TRAIN META_TRAIN META_EVAL); else LINES=(REPTILE FOMAML_STAR); fi
declare -A LINE_NAMES=([REPTILE]="Reptile line (--checkpoint demo_runs/reptile)"
  [FOMAML_STAR]="FOMAML* line (--checkpoint demo_runs/fomaml_star)"
  [PRE_TRAIN]="MTL --phase pre_train line" [META_TRAIN]="MTL --phase meta_train line"
  [META_EVAL]="MTL --phase meta_eval line")
refused() {
  echo "run.sh: the demo's ${LINE_NAMES[$1]} refused the command line (with the extra" \
    "arguments: ${EXTRA:-none}); nothing was deleted" >&2
  exit 2
}
EXTRA="$*"
for line in "${LINES[@]}"; do
  declare -n FLAGS="$line"
  "$PY" mode_flags.py "${FLAGS[@]}" || refused "$line"
done

echo "== metaseg demo ($DEMO): FSS-1000 not found, running the synthetic CPU demo ==" >&2
"$PY" -m data.demo --out_dir demo_data --num_classes 120 --images_per_class 10 \
  --image_size "$DEMO_SIZE" --seed 0
"$PY" fss_1000_image_to_tfrecord.py --input_dir demo_data --tfrecord_dir demo_shards \
  --image_size "$DEMO_SIZE"
for line in "${LINES[@]}"; do
  declare -n FLAGS="$line"
  "$PY" -m modes.precheck "${FLAGS[@]}" || refused "$line"
done

if [ "$DEMO" = mtl ]; then
  rm -rf demo_runs/mtl  # a fresh run each time (the same command would otherwise resume)
  "$PY" run_metasegnet.py "${PRE_TRAIN[@]}"
  "$PY" run_metasegnet.py "${META_TRAIN[@]}"
  "$PY" run_metasegnet.py "${META_EVAL[@]}"
  echo "Segment your own images with this init, in your browser (paint a few examples):"
  echo "  $PY run_metasegnet.py --serve --checkpoint demo_runs/mtl"
  exit 0
fi

# A fresh run each time (rerunning the same run_metasegnet.py command would otherwise resume).
rm -rf demo_runs/reptile demo_runs/fomaml_star
# Reptile moves theta towards the adapted weights (a whole task's displacement per task) ...
"$PY" run_metasegnet.py "${REPTILE[@]}"
# ... FOMAML* by the last step's update on 2 held-out pairs only, so it takes a larger step size.
"$PY" run_metasegnet.py "${FOMAML_STAR[@]}"
"$PY" scripts/demo_summary.py demo_runs/reptile demo_runs/fomaml_star
echo "Segment your own images with the Reptile init, in your browser (paint a few examples):"
echo "  $PY run_metasegnet.py --serve --checkpoint demo_runs/reptile"
