"""Studies as Hydra multiruns: the random sweeper (sampling, job order, failure report) and sweep folders."""
