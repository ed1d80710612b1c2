"""Sweeps: a grid of runs (:mod:`.plan`) executed locally or on Ray (:mod:`.executors`)."""
