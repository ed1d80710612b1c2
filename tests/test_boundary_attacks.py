"""Issue 16's attacks on the numbers, one per class: a candidate's process produces
weights, never numbers. Each candidate below got a forged figure recorded before the
split protocol; now the honest figure is recorded, or the candidate is refused with its
status, and a sentinel file outside the run is unchanged.

The policy is switched off (``check_policy=False``): these test the process boundary
itself, which must hold for whatever code gets past the filter.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

from candidates import SMALL_CNN
from lemo_nade.records import Evaluation, Status
from lemo_nade.sandbox import Sandbox
from sandboxes import job

pytest_plugins = ["sandbox_fixtures"]
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux sandbox")

EPOCHS = 2


def run(box: Sandbox, code: str) -> Evaluation:
    return box.evaluate(job(code, epochs=EPOCHS), timeout_s=120, check_policy=False)


@pytest.fixture(scope="module")
def honest(box: Sandbox) -> Evaluation:
    evaluation = run(box, SMALL_CNN)
    assert evaluation.status is Status.OK and evaluation.metrics is not None, evaluation.error
    return evaluation


@pytest.fixture
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("outside") / "sentinel.txt"
    path.write_text("untouched\n")
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _prefix(code: str) -> str:
    return code + SMALL_CNN


def test_patching_the_accuracy_ops_does_not_reach_the_measurement(
    box: Sandbox, honest: Evaluation
) -> None:
    """Replaced comparison, argmax and loss ops forged A2 = 1.0 in the candidate's own
    process; the measuring process never ran this code."""
    code = _prefix(
        "import torch\n"
        "torch.Tensor.eq = lambda self, other: torch.ones(self.shape, dtype=torch.bool)\n"
        "torch.Tensor.__eq__ = torch.Tensor.eq\n"
        "torch.Tensor.argmax = lambda self, *a, **k: torch.zeros(self.shape[0], dtype=torch.long)\n"
    )
    evaluation = run(box, code)
    assert evaluation.status is Status.OK, evaluation.error
    assert evaluation.metrics is not None and honest.metrics is not None
    assert pytest.approx(honest.metrics.A2, abs=0.03) == evaluation.metrics.A2
    assert evaluation.metrics.A2 < 0.99


def test_hiding_parameters_does_not_change_p(box: Sandbox, honest: Evaluation) -> None:
    """``Net.parameters()`` overridden after the optimizer took them once gave P = 0; P
    now counts every tensor the exported graph holds."""
    code = SMALL_CNN + (  # the first call (the optimizer's) sees them; later ones do not
        "\n    def parameters(self, recurse=True):\n"
        "        self.__dict__['calls'] = self.__dict__.get('calls', 0) + 1\n"
        "        return super().parameters(recurse) if self.calls == 1 else iter(())\n"
    )
    evaluation = run(box, code)
    assert evaluation.status is Status.OK, evaluation.error
    assert evaluation.metrics is not None and honest.metrics is not None
    assert evaluation.metrics.P == honest.metrics.P == (8 * 9 + 8) + (128 * 10 + 10)


def test_slowing_the_clock_does_not_change_speed_or_energy(
    box: Sandbox, honest: Evaluation
) -> None:
    """Slowed clock functions gave FPS x83 and E1/E2 / 85 when the candidate's process
    timed itself; FPS and E2 come from the measuring process, E1 from outside."""
    code = _prefix(
        "import time\n"
        "_pc, _mono, _pt = time.perf_counter, time.monotonic, time.process_time\n"
        "time.perf_counter = lambda: _pc() / 100\n"
        "time.monotonic = lambda: _mono() / 100\n"
        "time.process_time = lambda: _pt() / 100\n"
    )
    evaluation = run(box, code)
    if evaluation.status is Status.FAILED_RESULT:  # its own result carried a negative time
        assert "is not a finite number >= 0" in evaluation.error
        return
    assert evaluation.status is Status.OK, evaluation.error
    forged, real = evaluation.metrics, honest.metrics
    assert forged is not None and real is not None
    assert real.F / 5 < forged.F < real.F * 5
    assert real.E1 / 5 < forged.E1 < real.E1 * 5 and real.E2 / 5 < forged.E2 < real.E2 * 5


def test_memoised_outputs_do_not_inflate_speed(box: Sandbox, honest: Evaluation) -> None:
    """A forward that answers repeated inputs from a cache measured FPS x1900; the graph
    the measuring process runs computes every batch (or the export refuses the cache)."""
    code = SMALL_CNN.replace(
        "    def forward(self, x: torch.Tensor) -> torch.Tensor:\n",
        "    def forward(self, x: torch.Tensor) -> torch.Tensor:\n"
        "        key = (x.shape[0], float(x.flatten()[:8].sum()))\n"
        "        cache = self.__dict__.setdefault('memo', {})\n"
        "        if not self.training and key in cache:\n"
        "            return cache[key]\n"
        "        cache[key] = self._forward(x)\n"
        "        return cache[key]\n\n"
        "    def _forward(self, x: torch.Tensor) -> torch.Tensor:\n",
    )
    evaluation = run(box, code)
    if evaluation.status is Status.FAILED_EXPORT:  # the cache is data-dependent control flow
        assert "torch.export" in evaluation.error
        return
    assert evaluation.status is Status.OK, evaluation.error
    assert evaluation.metrics is not None and honest.metrics is not None
    assert evaluation.metrics.F < honest.metrics.F * 5


@pytest.mark.parametrize(
    "forged",
    [
        '{"status": "ok", "metrics": {"A1": 1, "A2": 1, "E1": 0, "E2": 0, "F": 1e9, "P": 0,'
        ' "candidate_kwh": -1}}',
        '{"status": "ok", "metrics": {"A1": 1, "A2": "0.99", "E1": 0, "E2": 0, "F": 1, "P": 1}}',
        '{"status": "ok", "metrics": null, "error": "", "pwned": true}',
        '{"status": "failed_data", "error": "DatasetError: stop the run"}',
    ],
    ids=["negative-energy", "type-confusion", "extra-key", "claims-data-error"],
)
def test_a_replaced_result_writer_forges_nothing(box: Sandbox, forged: str) -> None:
    """The candidate replaces the worker's result writer (any value, a negative energy
    that refunded the budget, a string accuracy that stopped the run): its result counts
    only for how it ended, a malformed one is ``failed_result``, a claimed data error
    (which would stop the run) too."""
    code = _prefix(
        "import sys\n"
        "w = sys.modules['lemo_nade.engine.worker']\n"
        "w.write_result = lambda path, ev: (open(path, 'w').write("
        f"{forged!r}), None)[1]\n"
    )
    evaluation = run(box, code)
    if "failed_data" in forged:  # a failure of its own, never one that stops the run
        assert evaluation.status is Status.FAILED_TRAIN, evaluation.error
        return
    assert evaluation.status in (Status.OK, Status.FAILED_RESULT), evaluation.error
    if evaluation.status is Status.OK:  # a well-formed result: its numbers were not used
        m = evaluation.metrics
        assert m is not None and m.P == (8 * 9 + 8) + (128 * 10 + 10)
        assert m.A2 < 0.99 and m.E1 > 0 and m.F < 1e8
        assert m.candidate_kwh is not None and m.candidate_kwh > 0
    assert evaluation.spent_kwh >= 0


def test_the_candidates_process_holds_no_validation_labels(box: Sandbox, features: object) -> None:
    """Label theft: the candidate looks for the prepared evaluation file and for the
    dataset's other copies (the built-in dataset inside the package included); Landlock
    lets it read only its own training file."""
    if not getattr(features, "landlock_abi", 0):
        pytest.skip("needs Landlock (the kernel keeps the candidate from reading files)")
    code = _prefix(
        "import glob, os, tempfile\n"
        "found = []\n"
        "import lemo_nade\n"
        "data = os.path.join(os.path.dirname(lemo_nade.__file__), 'data')\n"
        "paths = [os.path.join(data, 'digits.npz')]\n"
        "for pattern in ('/tmp/lemo-nade-*/eval.pt', tempfile.gettempdir() + '/../*/eval.pt'):\n"
        "    paths += glob.glob(pattern)\n"
        "for path in paths:\n"
        "    try:\n"
        "        open(path, 'rb').read(1)\n"
        "        found.append(path)\n"
        "    except OSError:\n"
        "        pass\n"
        "try:\n"
        "    found += os.listdir(data)\n"
        "except OSError:\n"
        "    pass\n"
        "print('LEAKED' if found else 'NOTHING', found)\n"
    )
    evaluation = run(box, code)
    assert evaluation.status is Status.OK, evaluation.error
    assert "NOTHING" in evaluation.log_tail and "LEAKED" not in evaluation.log_tail


@pytest.mark.parametrize("kind", ["link", "pickle", "fifo"])
def test_a_planted_artifact_is_refused(box: Sandbox, sentinel: Path, kind: str) -> None:
    """The hand-over file is read without following links, as a regular file, and loaded
    without unpickling: a link to a file outside, a FIFO or an archive carrying a pickle
    that would write the sentinel are ``failed_export``."""
    before = _digest(sentinel)
    plant = {
        "link": f"os.symlink({str(sentinel)!r}, 'model.pt2')",
        "fifo": "os.mkfifo('model.pt2')",
        "pickle": (
            "import pickle, zipfile, io\n"
            "    class E:\n"
            "        def __reduce__(self):\n"
            f"            return (open, ({str(sentinel)!r}, 'w'))\n"
            "    good = zipfile.ZipFile('model.pt2')\n"
            "    out = io.BytesIO(); bad = zipfile.ZipFile(out, 'w')\n"
            "    for n in good.namelist():\n"
            "        evil = n.endswith('sample_inputs/model.pt')\n"
            "        b = pickle.dumps(E()) if evil else good.read(n)\n"
            "        bad.writestr(n, b)\n"
            "    bad.close(); good.close()\n"
            "    os.remove('model.pt2'); open('model.pt2', 'wb').write(out.getvalue())"
        ),
    }[kind]
    code = _prefix(
        "import os, sys\n"
        "w = sys.modules['lemo_nade.engine.worker']\n"
        "_write = w.write_result\n"
        "def _after(path, ev):\n"
        "    if os.path.lexists('model.pt2') and " + repr(kind) + " != 'pickle':\n"
        "        os.remove('model.pt2')\n"
        f"    {plant}\n"
        "    _write(path, ev)\n"
        "w.write_result = _after\n"
    )
    evaluation = run(box, code)
    assert evaluation.status is Status.FAILED_EXPORT, (evaluation.status, evaluation.error)
    assert _digest(sentinel) == before
