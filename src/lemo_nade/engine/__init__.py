"""Child-process side: loads data, trains and measures one candidate. Imports torch.

Only :mod:`lemo_nade.engine.worker` (run by :mod:`lemo_nade.sandbox` in a child
process) should import this package; the main process stays torch-free.
"""
