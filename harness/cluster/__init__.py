"""Running grids and studies on a Slurm cluster through submitit (``--launcher slurm``).

:mod:`~harness.cluster.jobs` (whether Slurm is there, the executor the ``cluster:`` section asks for,
job states from squeue), :mod:`~harness.cluster.task` (what one array task runs: a cell's life, its
logs, checkpoint and requeue on Slurm's signals) and :mod:`~harness.cluster.launcher` (the submitting
side of ``harness.run``: one job array, one progress display, the results). Importing the package
loads neither submitit nor torch; settings live in :mod:`harness.config.cluster`.
"""
