"""Executors: where a run's job actually runs (local processes or SLURM)."""
