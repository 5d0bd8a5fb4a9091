#!/usr/bin/env bash
# D-PSGD on a 16-node ring (IID and Dirichlet(0.1) label skew) against the centralized reference
# taking one step per round on the same 16 x 32 samples; one plot. About a minute on 2 cores.
set -euo pipefail
out=${1:-docs/dpsgd-vs-centralized.png}
gossipfl simulate --config experiments/dpsgd-digits-ring16.toml --out runs/dpsgd-iid
gossipfl simulate --config experiments/noniid-dirichlet.toml --out runs/dpsgd-dirichlet
gossipfl simulate --config experiments/dpsgd-digits-ring16.toml --algorithm centralized --out runs/centralized
gossipfl plot runs/dpsgd-iid runs/dpsgd-dirichlet runs/centralized --out "$out" \
  --title "D-PSGD on digits, ring:16, vs centralized SGD on the same samples"
