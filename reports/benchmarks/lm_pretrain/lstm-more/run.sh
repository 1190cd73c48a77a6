#!/bin/bash
# run.sh TAG EVAL_RULE "SECTION ARCH KEY VALUE" ... with stages given by STAGES (e.g. "lm:gru train:gru").
# EVAL_RULE: "always", or a reference validation accuracy the run must beat to be evaluated on test.
set -u
tag=$1 rule=$2; shift 2
cd /tmp/wt-exp
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/wt-exp/src MLFLOW_TRACKING_URI=sqlite:////work/main/mlflow.db TQDM_DISABLE=1
source /work/main/.venv/bin/activate
git checkout -q params.yaml
for kv in "$@"; do python3 /tmp/exp3/setp.py $kv || exit 1; done
out=/tmp/exp3/$tag; mkdir -p $out
git diff params.yaml > $out/params.diff
for st in $STAGES; do
  stage=${st%%:*} arch=${st##*:}
  echo "== $tag: $stage $arch $(date -u +%FT%TZ)"
  python -m sentiment_rnn.stages.$stage $arch 2>&1 | tee $out/$stage-$arch.log | grep -v '^\s*$' | tail -n 40 || exit 1
  [ ${PIPESTATUS[0]} -eq 0 ] || { echo "FAILED $stage $arch"; exit 1; }
  cp reports/metrics/$stage-$arch.json $out/ 2>/dev/null
  [ $stage = lm ] && cp reports/metrics/lm-$arch.json $out/
done
val=$(python -c "import json;print(json.load(open('reports/metrics/train-$arch.json'))['best_val_acc'])")
echo "$tag: best val $val (rule: $rule)"
cp -r models/$arch $out/model-$arch
if [ "$rule" = never ]; then echo "$tag: not evaluated here (rule: never)"; elif [ "$rule" = always ] || python -c "import sys; sys.exit(0 if $val > $rule else 1)"; then
  echo "== $tag: evaluate $arch $(date -u +%FT%TZ)"
  python -m sentiment_rnn.stages.evaluate $arch > $out/evaluate-$arch.log 2>&1 || { echo "FAILED evaluate"; exit 1; }
  cp reports/metrics/eval-$arch.json $out/
  python -c "import json;d=json.load(open('reports/metrics/eval-$arch.json'));print('$tag test', {k:v for k,v in d.items() if 'acc' in k})"
fi
echo "== $tag done $(date -u +%FT%TZ)"
