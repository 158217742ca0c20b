#!/bin/bash
# Multi-GPU / multi-node SLURM job for any jhmr config (one process per node, all its GPUs).
#
#   sbatch --nodes=2 --gpus-per-node=8 launch/slurm.sh configs/scorehmr.py:3dpw runs/3dpw [--config.x=y ...]
#
# jax.distributed.initialize() auto-detects the SLURM environment (coordinator = first node,
# process id = SLURM_PROCID), so every process runs the same command with --jax_distributed.
# The workdir must be on a filesystem shared by all nodes (checkpoints are written collectively).
# SLURM sends SIGTERM before a time limit / preemption: the trainer then writes a checkpoint and
# exits with 143; `--requeue` restarts the job, which resumes from that checkpoint.
#SBATCH --job-name=jhmr
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --signal=TERM@120
#SBATCH --requeue
#SBATCH --output=slurm-%j.out
set -euo pipefail
config=${1:?usage: slurm.sh CONFIG[:variant] WORKDIR [--config.overrides...]}
workdir=${2:?usage: slurm.sh CONFIG[:variant] WORKDIR [--config.overrides...]}
shift 2
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
PYTHON=${PYTHON:-.venv/bin/python}
# One task per node; srun forwards SIGTERM to it.
exec srun --kill-on-bad-exit=1 "$PYTHON" -m jhmr.launch --config "$config" --workdir "$workdir" \
  --jax_distributed "$@"
