#!/bin/bash
# Rule fixed before this run (2026-12-07, 07:10 UTC; lstm-seed2-adv02 had reached its epoch 4, not yet its end):
#  lstm-seed1-adv02: the first pair (the two-pass LM of seed 0, MLflow run 283494f6..., and classifier
#  seed 1) with adversarial epsilon 0.02, scored on validation. Then, as chain2.sh fixed: if the mean best
#  validation accuracy of the two 0.02 runs beats that of the two 0.01 runs (0.9280), both 0.02 runs are
#  evaluated on test; otherwise neither is, and 0.01 stays the LSTM's configuration.
set -u
R=/tmp/exp4/run.sh E=/tmp/exp4
rm -rf /tmp/wt-exp/models/lm-lstm && cp -r $E/lm-seed0-dl/model /tmp/wt-exp/models/lm-lstm
STAGES="train:lstm" $R lstm-seed1-adv02 never "lm lstm max_chunks_per_epoch 0" "lm lstm epochs 2" "train lstm adversarial_epsilon 0.02" || exit 1
best() { python -c "import json;print(json.load(open('$E/$1/train-lstm.json'))['best_val_acc'])"; }
a=$(best lstm-seed1-adv02) b=$(best lstm-seed2-adv02)
mean=$(python -c "print(round(($a + $b) / 2, 5))")
echo "epsilon 0.02: best val $a (pair 1), $b (pair 2), mean $mean; epsilon 0.01: mean 0.9280"
if python -c "import sys; sys.exit(0 if $mean > 0.9280 else 1)"; then
  cd /tmp/wt-exp && source /work/main/.venv/bin/activate
  export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/wt-exp/src MLFLOW_TRACKING_URI=sqlite:////work/main/mlflow.db TQDM_DISABLE=1
  for tag in lstm-seed1-adv02 lstm-seed2-adv02; do
    rm -rf models/lstm && cp -r $E/$tag/model-lstm models/lstm
    echo "== $tag: evaluate lstm $(date -u +%FT%TZ)"
    python -m sentiment_rnn.stages.evaluate lstm > $E/$tag/evaluate-lstm.log 2>&1 || { echo "FAILED evaluate"; exit 1; }
    cp reports/metrics/eval-lstm.json $E/$tag/
    python -c "import json;d=json.load(open('reports/metrics/eval-lstm.json'));print('$tag test', d['accuracy'])"
  done
else
  echo "not evaluated: 0.02 does not beat 0.01 on validation; 0.01 stays"
fi
echo "== chain3 done $(date -u +%FT%TZ)"
