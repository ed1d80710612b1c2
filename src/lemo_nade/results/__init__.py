"""The main-process side of the final protocol: ``retrain`` (the paper's final training of
the best model) and ``export``; their child-process side is :mod:`lemo_nade.engine`."""
