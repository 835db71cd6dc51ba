"""Running grids and studies on a Slurm cluster through submitit (``--launcher slurm``).

:mod:`~harness.cluster.jobs` (whether Slurm is there, the executor the ``cluster:`` section asks for,
job states from squeue), :mod:`~harness.cluster.task` (what one array task runs: a cell's life, its
logs, checkpoint and requeue on Slurm's signals), :mod:`~harness.cluster.launcher` (the submitting
side of ``harness.run``: one job array, one progress display, the results) and
:mod:`~harness.cluster.workers` (the workers of ``harness.tune`` and ``harness.fair`` as Slurm jobs).
Importing the package loads neither submitit nor torch; settings live in :mod:`harness.config.cluster`.
"""
