#!/bin/bash
# Rule fixed before any run (2026-12-07, 05:17 UTC, before the chain started):
#  lstm-seed2: second seed of the chosen LSTM configuration (two-pass LM, adversarial epsilon 0.01),
#  both the LM (lm.lstm.seed 1, retrained) and the classifier (train.lstm.seed 2) on new seeds.
#  Evaluated on test always, whatever its validation accuracy; no other configuration is run.
R=/tmp/exp4/run.sh
STAGES="lm:lstm train:lstm" $R lstm-seed2 always "lm lstm max_chunks_per_epoch 0" "lm lstm epochs 2" "lm lstm seed 1" "train lstm adversarial_epsilon 0.01" "train lstm seed 2"
