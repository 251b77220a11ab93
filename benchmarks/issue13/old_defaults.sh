#!/bin/bash
# Run from the repository root with the venv active; results go to bench-runs/issue13 (docs/results.md, issue 13).
# The pre-issue-13 defaults of the changed methods, at the current code, on synth-av (isolates the default change).
M='ogm-ge[offset=1,params=all,noise_std=scaled],gblend[estimate=joint],pmr[rule=paper,proto_pass=ordered],agm[target=encoders,grad_clip=0,modulation_ends=20],mla[alternate=step,owm_order=project_first,owm_normalize=false,owm_bias=true],reconboost[class_mean=false,learn_boost_rate=false,reset_optimizer=false],mmpareto[magnitude=1,rescale=encoder]'
modgap bench --methods "$M" --data synth-av --seeds 0,1,2 --out bench-runs/issue13 --jobs 2 --set train.threads=1 \
  --epochs 20 --set data.options.n=100 --set data.options.size=32 --set data.options.frames=2 \
  --set data.options.visual_noise=0.1 --set data.options.audio_snr_db=-15 --set model.width=4 \
  --set data.batch_size=32 --set data.eval_batch_size=128
