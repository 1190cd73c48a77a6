#!/bin/bash
# Rules fixed before any run (2026-12-07, written before the chain started at 02:2x UTC):
#  Two LSTM configurations, tried on validation only (rule "never" in run.sh):
#   lstm-dlr26: the full-pass LSTM LM kept in MLflow (run 8a9aecff6be14d7995772c8798771708),
#               plain 6-epoch fine-tuning as before but discriminative_lr 2.6 (ULMFiT's factor:
#               recurrent layers at lr/2.6, embedding at lr/6.76; no gradual unfreezing).
#   lstm-lm2ep: a language model of two full passes (lm.lstm.epochs=2, max_chunks_per_epoch=0),
#               then plain 6-epoch fine-tuning as in params.yaml.
#  Then only the one of the two with the higher best validation accuracy is evaluated on test,
#  and only if it beats 0.9264 (the LSTM's best so far). The other is never evaluated on test.
set -u
R=/tmp/exp3/run.sh
cd /tmp/wt-exp
source /work/main/.venv/bin/activate
rm -rf /tmp/exp3/mlflow-lm && MLFLOW_TRACKING_URI=sqlite:////work/main/mlflow.db mlflow artifacts download \
  --run-id 8a9aecff6be14d7995772c8798771708 --artifact-path model --dst-path /tmp/exp3/mlflow-lm > /dev/null
mkdir -p models/lm-lstm && cp /tmp/exp3/mlflow-lm/model/* models/lm-lstm/
sha256sum models/lm-lstm/lm.pt
STAGES="train:lstm" $R lstm-dlr26 never "train lstm discriminative_lr 2.6"
STAGES="lm:lstm train:lstm" $R lstm-lm2ep never "lm lstm max_chunks_per_epoch 0" "lm lstm epochs 2"
v1=$(python -c "import json;print(json.load(open('/tmp/exp3/lstm-dlr26/train-lstm.json'))['best_val_acc'])")
v2=$(python -c "import json;print(json.load(open('/tmp/exp3/lstm-lm2ep/train-lstm.json'))['best_val_acc'])")
best=$(python -c "print('lstm-dlr26' if $v1 >= $v2 else 'lstm-lm2ep')")
bv=$(python -c "print(max($v1, $v2))")
echo "selection on validation: lstm-dlr26 $v1, lstm-lm2ep $v2 -> $best ($bv), reference 0.9264"
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
echo "== chain done $(date -u +%FT%TZ)"
