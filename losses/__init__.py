"""Pair-based deep metric learning losses as General Pair Weighting: a miner plus a pair weighting over S.

Public API: ``build(name, **hparams)`` and ``available()``. (Being written: see issue 2.)
"""
