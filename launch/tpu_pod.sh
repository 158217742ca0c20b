#!/bin/bash
# Run a jhmr config on every host of a Cloud TPU VM pod slice (e.g. v5p-32).
#
#   launch/tpu_pod.sh TPU_NAME ZONE configs/scorehmr.py:3dpw gs://bucket/runs/3dpw [--config.x=y ...]
#
# Copies the repository to all workers, installs it (jax[tpu] + jhmr), then starts the same
# command on every worker with --jax_distributed (jax auto-detects the TPU pod topology). The
# workdir must be reachable by all hosts (a GCS bucket: orbax writes gs:// paths directly).
# A maintenance event sends SIGTERM: the trainer checkpoints and exits 143; rerun this script
# to resume from the newest checkpoint.
set -euo pipefail
tpu=${1:?usage: tpu_pod.sh TPU_NAME ZONE CONFIG[:variant] WORKDIR [overrides...]}
zone=${2:?zone}
config=${3:?config}
workdir=${4:?workdir}
shift 4
repo=$(cd "$(dirname "$0")/.." && pwd)
ssh_all() { gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "$1"; }
gcloud compute tpus tpu-vm scp --zone "$zone" --worker=all --recurse "$repo" "$tpu":~/jhmr
ssh_all "cd ~/jhmr && python3 -m pip install -q 'jax[tpu]' -e ."
ssh_all "cd ~/jhmr && python3 -m jhmr.launch --config '$config' --workdir '$workdir' --jax_distributed $*"
