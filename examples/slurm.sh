#!/bin/bash
# tuneforge on several machines under Slurm: one task per node, each starting that node's processes (torchrun
# underneath). Submit with `sbatch examples/slurm.sh run.yaml`; see docs/distributed.md.
#SBATCH --job-name=tuneforge
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --output=tuneforge-%j.log
set -euo pipefail
CONFIG=${1:-run.yaml}
GPUS=${GPUS_PER_NODE:-8}
MASTER=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1):${MASTER_PORT:-29500}
# every node: the same command, its own --node-rank (the run folder must be on a shared file system for FSDP)
srun bash -c "tuneforge train '$CONFIG' --nnodes $SLURM_NNODES --node-rank \$SLURM_NODEID \
    --master $MASTER --nproc $GPUS training.distributed=fsdp ${EXTRA:-}"
