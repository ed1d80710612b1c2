"""Child-process side: loads data, trains and measures one candidate.

The modules that import torch (worker, forkserver, train, measure, data, ...) run only in
a sandboxed child started by :mod:`lemo_nade.sandbox`. This package itself and its pure
modules (protocol, confine, access, proctree, linux, energy, sensors) import no torch; the
run process uses protocol and confine (the files, exit codes, Spec and Features of the
boundary). No module here imports the main-process side (sandbox, store, search, cli,
reporting, sweeps, results, architects): tests/test_engine_imports.py checks it.
"""
