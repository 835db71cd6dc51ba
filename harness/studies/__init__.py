"""What ``harness.tune`` and ``harness.fair`` share: Optuna storages and the steps of a study command.

Modules: ``storage`` (opening an Optuna storage from a URL), ``command`` (the steps both commands run:
storage, prepare, workers, wait, outputs, the exit code).
"""
