#!/usr/bin/env bash
# Rebuild the shipped model and the early-classification table of MODEL_CARD.md.
# Needs ../shared/data/ndpi/developer (read-only, not part of the repository). Run from the repository
# root; about 2 minutes for the model and 40 minutes for the curve on two CPU cores.
set -euo pipefail
D=${NDPI_DEV:-../shared/data/ndpi/developer}

# 1. the shipped model: the packet preset's defaults (no flags), all developer captures, grouped 80/20
#    train/validation split (seed 0; session groups on one side). Validation selects the epoch and fits
#    the temperature and the unknown threshold. One training seed, not picked among several.
trafficsnn train "$D/pcap" --labels "$D/task.csv" --session-group ndpi --fractions 0.8 0.2 0.0 --seed 0 \
  --out runs/ndpi6-snn --quiet

# 2. grouped 5-fold cross-validation x 5 seeds on identical folds: the SNN's anytime verdicts after
#    1..50 packets and at the end, baselines re-fitted per prefix, ECE and the unknown rule
trafficsnn curve "$D/pcap" --labels "$D/task.csv" --models snn --seeds 0,1,2,3,4 --out runs/curve-snn
trafficsnn curve "$D/pcap" --labels "$D/task.csv" --models gbt,rf,knn --seeds 0,1,2,3,4 --out runs/curve-base
