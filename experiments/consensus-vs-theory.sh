#!/usr/bin/env bash
# Consensus rate against the spectral prediction on four topologies, in one plot.
set -euo pipefail
for spec in ring:16 torus:4x4 exponential:16 complete:16; do
  gossipfl simulate --algorithm consensus --topology "$spec" --rounds 300 --out "runs/consensus-${spec//:/}"
done
out=${1:-docs/consensus-vs-theory.png}
gossipfl plot runs/consensus-ring16 runs/consensus-torus4x4 runs/consensus-exponential16 \
  runs/consensus-complete16 --out "$out" --title "Consensus distance vs SLEM^t"
