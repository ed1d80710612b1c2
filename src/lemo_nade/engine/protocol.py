"""What crosses the process boundary between the run process (:mod:`lemo_nade.sandbox`)
and the sandboxed child (:mod:`lemo_nade.engine.forkserver`, :mod:`lemo_nade.engine.worker`).

Pure: no torch and no import from the main-process side, so that both sides can import
it and the child needs nothing of the sandbox's machinery.

- The request, one JSON object: ``{"job": EvalJob.to_dict(), "spec":
  confine.Spec.to_dict(), "confine": bool, "result": path, "log": path, "timeout_s":
  seconds}``. The fork server gets it as one line on its stdin; a fresh interpreter
  gets it in :data:`REQUEST_FILE` (``python -m lemo_nade.engine.worker REQUEST RESULT``).
- The answer: the child writes an ``Evaluation.to_dict()`` to :data:`RESULT_FILE` in its
  working directory (atomically; at most ``RESULT_SIZE_LIMIT_BYTES``, read without
  following links) and its stdout/stderr to :data:`LOG_FILE`. Whatever the child does,
  the run process trusts only its exit status and these two files.
- Exit codes that mean the sandbox itself failed, not the candidate:
  :data:`CONFINE_FAILED` and :data:`SETUP_FAILED`.
- :func:`looks_like_oom`: the texts that mean memory ran out. The child applies it to an
  exception, the run process to the log of a child that wrote no result.
"""

from __future__ import annotations

REQUEST_FILE = "request.json"
RESULT_FILE = "result.json"
LOG_FILE = "child.log"
RESULT_SIZE_LIMIT_BYTES = 1 * 2**20
# The search and retrain protocol's files (lemo_nade.sandbox.split): the prepared data a
# training child may read, the one its measuring child reads, and the trained model the
# training child hands over (a torch.export archive, refused above the size cap).
TRAIN_FILE = "train.pt"
EVAL_FILE = "eval.pt"
ARTIFACT_FILE = "model.pt2"
MAX_ARTIFACT_BYTES = 512 * 2**20
CONFINE_FAILED = 70  # exit code: a probed isolation step failed in the candidate
SETUP_FAILED = 71  # exit code: the fork server's child could not set up its session or files
# Texts that mean out of memory: Python, torch (CPU and CUDA), C++, the dynamic loader.
OOM_MARKERS = (
    "memoryerror",
    "out of memory",
    "cannot allocate memory",
    "can't allocate memory",
    "std::bad_alloc",
    "failed to map segment",
)


def looks_like_oom(text: str) -> bool:
    """Whether an error text or a log says memory ran out (case-insensitive)."""
    lowered = text.lower()
    return any(marker in lowered for marker in OOM_MARKERS)
