#!/bin/bash
# Rules fixed before any run (2026-12-07 03:40 UTC, before this chain started):
#  Both on the two-pass LSTM LM just trained by chain.sh (lstm-lm2ep: val ppl/token 127.25),
#  each a change against that run's plain fine-tuning (best val 0.9224), aimed at its overfitting
#  (val loss rising from epoch 2 while train acc reaches 0.97):
#   lstm-lm2ep-d04:   classifier dropout 0.4 instead of 0.2
#   lstm-lm2ep-adv01: adversarial training, epsilon 0.01 (the GRU's 0.02 halved)
#  Validation only; then only the one with the higher best validation accuracy is evaluated on
#  test, and only if it beats 0.9264 (the LSTM's best so far). The other is never evaluated on test.
set -u
R=/tmp/exp3/run.sh
cd /tmp/wt-exp
source /work/main/.venv/bin/activate
sha256sum models/lm-lstm/lm.pt
STAGES="train:lstm" $R lstm-lm2ep-d04 never "train lstm model.dropout 0.4"
STAGES="train:lstm" $R lstm-lm2ep-adv01 never "train lstm adversarial_epsilon 0.01"
v1=$(python -c "import json;print(json.load(open('/tmp/exp3/lstm-lm2ep-d04/train-lstm.json'))['best_val_acc'])")
v2=$(python -c "import json;print(json.load(open('/tmp/exp3/lstm-lm2ep-adv01/train-lstm.json'))['best_val_acc'])")
best=$(python -c "print('lstm-lm2ep-d04' if $v1 >= $v2 else 'lstm-lm2ep-adv01')")
bv=$(python -c "print(max($v1, $v2))")
echo "selection on validation: lstm-lm2ep-d04 $v1, lstm-lm2ep-adv01 $v2 -> $best ($bv), reference 0.9264"
if python -c "import sys; sys.exit(0 if $bv > 0.9264 else 1)"; then
  rm -rf models/lstm && cp -r /tmp/exp3/$best/model-lstm models/lstm
  export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/wt-exp/src MLFLOW_TRACKING_URI=sqlite:////work/main/mlflow.db TQDM_DISABLE=1
  echo "== $best: evaluate lstm $(date -u +%FT%TZ)"
  python -m sentiment_rnn.stages.evaluate lstm > /tmp/exp3/$best/evaluate-lstm.log 2>&1 || { echo "FAILED evaluate"; exit 1; }
  cp reports/metrics/eval-lstm.json /tmp/exp3/$best/
  python -c "import json;d=json.load(open('reports/metrics/eval-lstm.json'));print('$best test', {k:v for k,v in d.items() if 'acc' in k})"
else
  echo "neither beats 0.9264 on validation: no test evaluation"
fi
echo "== chain2 done $(date -u +%FT%TZ)"
