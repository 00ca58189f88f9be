"""Running one job on many processes and machines: DDP inside Hydra multiruns, SLURM."""
