#!/usr/bin/env bash
# ResNet-50 on ImageNet: sbatch slurm/resnet50.sh [key=value ...] from the repository root.
# Override any #SBATCH line on the command line (sbatch --nodes=4 --partition=gpu ...) and the
# rest through the environment (see slurm/common.sh): DATA_PATH=/datasets/imagenet WANDB_MODE=offline.
# Whole nodes (--exclusive), one task per GPU started by srun in common.sh. No --ntasks-per-node here:
# with it, `sbatch --nodes=1-2` is always given the minimum (1 node); without it Slurm allocates as
# many nodes of the range as are free (tests/slurm).
#SBATCH --job-name=resnet50
#SBATCH --nodes=2
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --cpus-per-task=8
#SBATCH --time=48:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%j.out
JOB_CONFIG="${JOB_CONFIG:-configs/imagenet/resnet50.yaml}"
JOB_CONFIG_NAME=resnet50
JOB_SCRIPT=slurm/resnet50.sh
# shellcheck source=slurm/common.sh
source "${PIPELINE_HOME:-${SLURM_SUBMIT_DIR:-.}}/slurm/common.sh"
