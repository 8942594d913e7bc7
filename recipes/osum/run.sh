#!/usr/bin/env bash
# OSUM's three training stages on one or many nodes: run this same command on every node.
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 GPUS=8 bash recipes/osum/run.sh      # on node0
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=node0 GPUS=8 bash recipes/osum/run.sh      # on node1
# Edit the paths in stage*.yaml and data.yaml first, and check each stage with --dry-run (no weights loaded).
# A stage that stops (preemption, kill -9) resumes exactly when this script is run again.
set -euo pipefail
cd "$(dirname "$0")/../.."
nnodes="${NNODES:-1}"; node_rank="${NODE_RANK:-0}"; gpus="${GPUS:-8}"
master="${MASTER_ADDR:-127.0.0.1}"; port="${MASTER_PORT:-29500}"
osum=.venv/bin/osum
for stage in 1 2 3; do
  $osum train "recipes/osum/stage$stage.yaml" --dry-run --world-size $((nnodes * gpus))
  .venv/bin/torchrun --nnodes "$nnodes" --node_rank "$node_rank" --nproc_per_node "$gpus" \
      --rdzv_backend c10d --rdzv_endpoint "$master:$port" --rdzv_id "osum-stage$stage" \
      -m osum.cli train "recipes/osum/stage$stage.yaml"
done
if [ "$node_rank" = 0 ]; then
  $osum average exp/osum/stage3 --best 3 --metric wer --out exp/osum/model
  echo "model: exp/osum/model (osum infer / decode / web / serve --model exp/osum/model)"
fi
