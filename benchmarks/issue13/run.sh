#!/bin/bash
# Run from the repository root with the venv active; results go to bench-runs/issue13 (docs/results.md, issue 13).
# usage: run.sh METHODS   (the issue-4 grid, into bench-runs/issue13)
M=$1
modgap bench --methods $M --data mfeat:pix+fou,mfeat:fac+mor,mfeat:fou+fac+kar+pix+zer+mor --seeds 0,1,2 \
  --out bench-runs/issue13 --jobs 2 --set train.threads=1
modgap bench --methods $M --data synth-av --seeds 0,1,2 --out bench-runs/issue13 --jobs 2 --set train.threads=1 \
  --epochs 20 --set data.options.n=100 --set data.options.size=32 --set data.options.frames=2 \
  --set data.options.visual_noise=0.1 --set data.options.audio_snr_db=-15 --set model.width=4 \
  --set data.batch_size=32 --set data.eval_batch_size=128
