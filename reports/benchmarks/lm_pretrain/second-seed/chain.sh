#!/bin/bash
# Rules fixed before any run (2026-12-06, before 23:25 UTC, when the chain started):
#  rnn-seed2 / gru-seed43: second seeds of the chosen larger configuration: evaluated on test always.
#  lstm-ep8: full-pass LM, plain fine-tuning over 8 epochs instead of 6: test only if val > 0.9264.
R=/tmp/exp2/run.sh
STAGES="train:rnn" $R rnn-seed2 always "train rnn adversarial_epsilon 0.02" "train rnn seed 2"
STAGES="lm:gru train:gru" $R gru-seed43 always "lm gru max_chunks_per_epoch 0" "train gru adversarial_epsilon 0.02" "train gru seed 43"
STAGES="lm:lstm train:lstm" $R lstm-ep8 0.9264 "lm lstm max_chunks_per_epoch 0" "train lstm epochs 8"
