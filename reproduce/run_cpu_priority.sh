#!/usr/bin/env bash
# The prioritised CPU session of issue 6 (2 shared cores, no GPU), in the order the issue asks.
# Each step is resumable: re-running skips rows already in docs/results/results.jsonl.
# Run from the repository root, e.g.:
#   nohup nice bash reproduce/run_cpu_priority.sh > /tmp/repro/sweep.log 2>&1 &
set -u
# --sample-size 1024 --max-iter 100: the ADMM runs ~80 ms per iteration on a 128x1152 layer with
# 1024 input columns on this loaded machine and does not reach tol 1e-4 within 300 iterations;
# with the defaults (4096 columns, 300 iterations) the first VGG-16 L+S row (ALDS split search runs
# the solver 3 times per layer) was still on layer 6 of 14 after 12 minutes.
S="python reproduce/sweep.py --schedule cpu --device cpu --seed 0 --sample-size 1024 --max-iter 100"
# (1) VGG-16 on Fashion-MNIST: 3 methods x ALDS at 50/33/20% parameters and 25% MACs
$S --models vgg16 --budgets p50,p33,p20,f25 --methods lowrank_sparse,rank_only,sparse_only --allocations alds
# (2) the same with ENC and uniform allocation at 20% parameters
$S --models vgg16 --budgets p20 --methods lowrank_sparse,rank_only,sparse_only --allocations enc,uniform
# (3) MobileNetV2 (ImageNet weights) fidelity at 50% parameters, ALDS, both protocols
$S --models mobilenet_v2 --budgets p50 --methods lowrank_sparse,rank_only,sparse_only --allocations alds
# (4) AlexNet and GoogLeNet at 20% parameters, ALDS
$S --models alexnet,googlenet --budgets p20 --methods lowrank_sparse,rank_only,sparse_only --allocations alds
# (5) additive quantization on VGG-16: AQ alone, L+S then AQ (L+S alone is a row of step 1)
$S --models vgg16 --budgets p20 --methods aq,lowrank_sparse+aq --allocations alds
python reproduce/tables.py

# ---- session 2: commands that regenerate its rows (the exact command of every row is in its
# `command` field in docs/results/results.jsonl) ----
# AlexNet / GoogLeNet: all budgets with ALDS, then ENC and uniform at 20% params
$S --models alexnet,googlenet --budgets p50,p33,p20,f25 --methods lowrank_sparse,rank_only,sparse_only --allocations alds
$S --models alexnet,googlenet --budgets p20 --methods lowrank_sparse,rank_only,sparse_only --allocations enc,uniform
# MobileNetV2, split protocol, 50% and 80% params
$S --models mobilenet_v2 --budgets p80,p50 --methods lowrank_sparse,rank_only,sparse_only --allocations alds --mnv2-protocols split
# storage: AQ alone at 1 / 2 / 4 bits, L+S with unstructured / channel / row S then AQ at 2-4 bits
$S --models vgg16 --methods aq --aq M=1,K=256,d=8
$S --models vgg16 --methods aq --aq M=2,K=256,d=4
for st in unstructured channel row; do
  $S --models vgg16 --budgets p50,p33,p20 --methods lowrank_sparse+aq --allocations alds --structures $st --aq M=2,K=256,d=4
done
$S --models vgg16 --budgets p20,p33,p50 --methods lowrank_sparse+aq --allocations alds --structures unstructured --aq M=3,K=256,d=8
python reproduce/tables.py

# ---- session 3: the 3 x 3 x 3 x 4 grid of VGG-16 / AlexNet / GoogLeNet at one code version
# (after the refit fix and the error-scaled allocator), cells never measured first. Each
# row records its commit; tables.py keeps the newest row of each cell.
M="--methods lowrank_sparse,rank_only,sparse_only"
$S --models alexnet --budgets p50,p33,p20,f25 $M --allocations alds,enc,uniform
$S --models vgg16 --budgets p50,p33,f25 $M --allocations enc,uniform
$S --models googlenet --budgets p50,p33,f25 $M --allocations enc,uniform
$S --models vgg16 --budgets p50,p33,p20,f25 $M --allocations alds
$S --models vgg16 --budgets p20 $M --allocations enc,uniform
$S --models googlenet --budgets p50,p33,p20,f25 $M --allocations alds
$S --models googlenet --budgets p20 $M --allocations enc,uniform
python reproduce/tables.py
