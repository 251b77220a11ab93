#!/bin/bash
# Run from the repository root with the venv active; results go to bench-runs/issue13 (docs/results.md, issue 13).
# The pre-issue-13 defaults of the changed methods, at the current code, on synth-av (isolates the default change).
M="reconboost[class_mean=false]"
modgap bench --methods "$M" --data synth-av --seeds 0,1,2 --out bench-runs/issue13 --jobs 2 --set train.threads=1 \
  --epochs 20 --set data.options.n=100 --set data.options.size=32 --set data.options.frames=2 \
  --set data.options.visual_noise=0.1 --set data.options.audio_snr_db=-15 --set model.width=4 \
  --set data.batch_size=32 --set data.eval_batch_size=128
