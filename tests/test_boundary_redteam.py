"""Red-team attacks on the trust boundary beyond test_boundary_attacks.py: through the
``torch.export`` archive a candidate hands over, the measuring child that runs it, and
its working directory. Open holes are ``xfail(strict=True)`` (the test states what the
boundary should do; fixed, it XPASSes and the marker must go); held attacks not covered
elsewhere are plain tests. The policy is off: the process boundary itself is tested.
"""

from __future__ import annotations

import inspect
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from candidates import SMALL_CNN
from lemo_nade.engine import artifact, phases
from lemo_nade.engine.artifact import ArtifactError
from lemo_nade.records import Evaluation, Status
from lemo_nade.sandbox import Sandbox
from sandboxes import candidate_dirs, job

pytest_plugins = ["sandbox_fixtures"]
LINUX = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux sandbox")
SMALL_P = (8 * 9 + 8) + (128 * 10 + 10)
EXAMPLE = torch.zeros(2, 1, 8, 8)


def run(box: Sandbox, code: str, timeout_s: float = 120) -> Evaluation:
    return box.evaluate(job(code, epochs=1), timeout_s=timeout_s, check_policy=False)


# ---- the loader: a shape expression is Python ----------------------------------------


# torch.export's loader hands every symbolic-shape string of models/model.json
# (``"expr_str": "Symbol('s77', positive=True, integer=True)"``) to sympy.sympify,
# which evaluates it with eval(): builtins such as __import__ and exec included.
def poisoned(data: bytes, code: str) -> bytes:
    """``data`` with its first shape expression wrapped to exec ``code`` when loaded."""
    src, out = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            entry = src.read(name)
            if name.endswith("models/model.json"):
                text = entry.decode()
                start = text.index('"expr_str": "') + len('"expr_str": "')
                expr = json.loads('"' + text[start:].split('"', 1)[0] + '"')
                wrapped = f"(__import__('builtins').exec({code!r}) or {expr})"
                entry = text.replace(json.dumps(expr), json.dumps(wrapped), 1).encode()
            dst.writestr(name, entry)
    return out.getvalue()


def test_a_shape_expression_in_the_archive_runs_no_python(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    data = poisoned(artifact.export_bytes(model, EXAMPLE), f"open({str(marker)!r}, 'w')")
    with pytest.raises(ArtifactError):
        artifact.load(data)
    assert not marker.exists()


SYMPIFY_PAYLOAD = """
import sys
w = sys.modules['lemo_nade.engine.worker']
real = w.measure_trained
def forged(*a, **k):
    return real(*a, **k) | dict(A1=1.0, A2=1.0, F=1e9, latency_ms_p50=1e-6, E2=0.0)
w.measure_trained = forged
sys.modules['lemo_nade.engine.phases'].graph_sizes = lambda program: dict(
    P=1, params_trainable=1, model_mb=1e-6)
"""
# The candidate rewrites its own archive after the export (the worker's result writer
# runs last in its process), with the loader function above as source.
SYMPIFY = (
    "import io, json, os, sys, zipfile\n"
    f"exec({inspect.getsource(poisoned)!r})\n"
    f"PAYLOAD = 'import builtins\\nbuiltins.exec(%r, builtins.dict())' % {SYMPIFY_PAYLOAD!r}\n"
    "_w = sys.modules['lemo_nade.engine.worker']\n"
    "_write = _w.write_result\n"
    "def _after(path, ev):\n"
    "    if os.path.exists('model.pt2'):\n"
    "        data = poisoned(open('model.pt2', 'rb').read(), PAYLOAD)\n"
    "        open('model.pt2', 'wb').write(data)\n"
    "    _write(path, ev)\n"
    "_w.write_result = _after\n" + SMALL_CNN
)


@LINUX
def test_a_shape_expression_payload_forges_no_metric(box: Sandbox) -> None:
    evaluation = run(box, SYMPIFY)
    if evaluation.status is Status.FAILED_EXPORT:  # the archive refused
        return
    assert evaluation.status is Status.OK, evaluation.error
    m = evaluation.metrics
    assert m is not None and m.P == SMALL_P and m.A2 < 0.99 and m.F < 1e8 and m.E2 > 0


# ---- the graph: ATen ops that read files ---------------------------------------------


class _ReadsAFile(nn.Module):
    def __init__(self, path: str, size: int) -> None:
        super().__init__()
        self.path, self.size, self.fc = path, size, nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leak = torch.from_file(self.path, False, self.size, dtype=torch.uint8)
        return self.fc(x.flatten(1)) + leak[:10].float()


def test_a_graph_that_reads_a_file_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(bytes(range(64)))
    lib = torch.library.Library("aten", "FRAGMENT")  # the exporter needs a fake kernel
    try:
        fake = lambda filename, shared=None, size=0, **kw: torch.empty(size, dtype=kw["dtype"])  # noqa: E731
        torch.library.register_fake("aten::from_file", fake, lib=lib)
        data = artifact.export_bytes(_ReadsAFile(str(secret), 64).eval(), EXAMPLE)
    finally:
        lib._destroy()
    with pytest.raises(ArtifactError):
        artifact.load(data)


# The candidate finds the prepared directory (its job is in the stack), stats eval.pt
# (Landlock does not mediate stat), rebuilds its layout from train.pt with dummy
# validation tensors, and exports a graph that maps eval.pt with aten.from_file and
# answers every image with the label of its nearest stored image: no weights at all.
STEAL = """
import io, os, sys
import torch
from torch import nn
torch.library.register_fake("aten::from_file")(
    lambda filename, shared=None, size=0, **kw: torch.empty(size, dtype=kw["dtype"]))

def _plan():
    frame = sys._getframe()
    while not getattr(frame.f_locals.get("job"), "prepared", None):
        frame = frame.f_back
    where = frame.f_locals["job"].prepared
    train = torch.load(os.path.join(where, "train.pt"), weights_only=True)
    size = os.stat(os.path.join(where, "eval.pt")).st_size
    shape, gen = tuple(train["x_fit"].shape[1:]), torch.Generator().manual_seed(1)
    for n in range(1, 20000):
        x_val = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=gen)
        y_val = torch.randint(1 << 40, 1 << 50, (n,), generator=gen)
        dummy = {k: train[k] for k in ("mean", "std", "num_classes", "x_fit", "y_fit")}
        buffer = io.BytesIO()
        torch.save(dummy | {"x_held": x_val, "y_held": y_val}, buffer)
        if len(buffer.getvalue()) == size:
            break
    at = lambda t: buffer.getvalue().find(t.numpy().tobytes())
    parts = [(at(train["x_fit"]), at(train["y_fit"]), len(train["x_fit"])),
             (at(x_val), at(y_val), n)]
    return dict(path=os.path.join(where, "eval.pt"), size=size, parts=parts,
                mean=float(train["mean"].flatten()[0]), std=float(train["std"].flatten()[0]))

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.plan = nn.Linear(64, 10), _plan()

    def forward(self, x):
        if not torch.compiler.is_exporting() and not isinstance(x, torch._subclasses.FakeTensor):
            return self.fc(x.flatten(1))
        p = self.plan
        raw = torch.from_file(p["path"], False, p["size"], dtype=torch.uint8)
        images = torch.cat([raw[i : i + n * 64].view(n, 64) for i, _, n in p["parts"]])
        labels = torch.cat([raw[j : j + n * 8].view(torch.int64) for _, j, n in p["parts"]])
        images = (images.float() - p["mean"]) / p["std"]
        flat = x.flatten(1)
        nearest = ((images * images).sum(1) - 2.0 * flat @ images.t()).argmin(1)
        return nn.functional.one_hot(labels[nearest], 10).float() * 10.0
"""


@LINUX
def test_the_graph_cannot_read_the_validation_labels(box: Sandbox) -> None:
    evaluation = run(box, STEAL)
    if evaluation.status is not Status.OK:  # refused at load, or the read failed
        return
    assert evaluation.metrics is not None and evaluation.metrics.A2 < 0.99


# ---- the graph: state kept between the measuring passes ------------------------------


class _Counting(nn.Module):
    """A call counter (an in-place op on a buffer) and torch.cond: the real network
    until ``after`` images were seen, a constant after that."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after, self.fc = after, nn.Linear(64, 10)
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.add_(x.shape[0])
        cheap, real = (lambda x: x.flatten(1)[:, :10] * 0.0), (lambda x: self.fc(x.flatten(1)))
        return torch.cond(self.seen > self.after, cheap, real, (x,))


def test_a_graph_keeps_no_state_between_calls() -> None:
    data = artifact.export_bytes(_Counting(after=4).eval(), EXAMPLE)
    try:
        graph = phases.Graph(artifact.load(data))
    except ArtifactError:
        return
    first = graph(x := torch.randn(2, 1, 8, 8))
    assert all(torch.equal(graph(x), first) for _ in range(4))


# The same counter in a candidate: the A1 and A2 passes (1166 + 143 digits images at
# the default split) and the FLOPs image run the network, the FPS and latency calls not.
HEAVY = """
import sys
import torch
from torch import nn
sys.modules.setdefault(__name__, type(sys)(__name__))  # torch.cond traces via dynamo

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 64, 3, padding=1)
        self.c2 = nn.Conv2d(64, 64, 3, padding=1)
        self.head = nn.Linear(64 * 4 * 4, 10)
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    def full(self, x):
        x = torch.relu(self.c2(torch.relu(self.c2(torch.relu(self.c1(x))))))
        return self.head(torch.max_pool2d(x, 2).flatten(1))

    def forward(self, x):
        return self.full(x)

sys.modules[__name__].__dict__.update(globals())
"""
COUNTING = HEAVY.replace(
    "    def forward(self, x):\n        return self.full(x)\n",
    "    def forward(self, x):\n"
    "        if self.training:\n"
    "            return self.full(x)\n"
    "        self.seen.add_(x.shape[0])\n"
    "        cheap = lambda x: x.flatten(1)[:, :10] * 0.0\n"
    "        return torch.cond(self.seen > 1310, cheap, self.full, (x,))\n\n"
    "    def train(self, mode=True):\n"
    "        self.seen.zero_()  # the count starts at the measuring child's first call\n"
    "        return super().train(mode)\n",
)


@LINUX
def test_a_stateful_graph_does_not_inflate_speed(box: Sandbox) -> None:
    honest, forged = run(box, HEAVY), run(box, COUNTING)
    assert honest.status is Status.OK and honest.metrics is not None, honest.error
    if forged.status is Status.FAILED_EXPORT:  # refused at load
        return
    assert forged.status is Status.OK and forged.metrics is not None, forged.error
    assert forged.metrics.F < honest.metrics.F * 5
    assert forged.metrics.latency_ms_p50 > honest.metrics.latency_ms_p50 / 5


# ---- the working directory: removing it must not take the run down -------------------

DEEP = (
    "import os\n"
    "_fd = os.open('.', os.O_RDONLY)\n"
    "for _ in range(3000):\n"
    "    os.mkdir('d', dir_fd=_fd)\n"
    "    _fd, _old = os.open('d', os.O_RDONLY, dir_fd=_fd), _fd\n"
    "    os.close(_old)\n" + SMALL_CNN
)


@LINUX
def test_a_deep_directory_tree_does_not_crash_the_run(box: Sandbox, own_tmp: Path) -> None:
    try:
        evaluation = run(box, DEEP)
        assert evaluation.status is Status.OK, evaluation.error
        assert candidate_dirs(own_tmp) == []
    finally:  # rm is iterative: what the failed removal left goes
        for left in candidate_dirs(own_tmp):
            subprocess.run(["rm", "-rf", str(left)], check=False)


class _Packed(nn.Module):  # 640 float32 weights held as 160 complex128 numbers
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("packed", torch.randn(10, 64).view(torch.complex128))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.packed.view(torch.float32).t()


def test_p_counts_weights_packed_into_a_wider_dtype() -> None:
    """The graph may not reinterpret a stored tensor's dtype (aten.view.dtype)."""
    with pytest.raises(ArtifactError, match=r"view\.dtype"):
        artifact.load(artifact.export_bytes(_Packed().eval(), EXAMPLE))


# ---- held: the measuring child fails alone -------------------------------------------


def eval_only(extra: str) -> str:
    """SMALL_CNN whose exported graph also runs ``extra`` (on ``y``, the honest logits);
    its training and shape check see the honest network."""
    return SMALL_CNN.replace(
        "        return self.head(x.flatten(1))\n",
        "        y = self.head(x.flatten(1))\n"
        "        if torch.compiler.is_exporting() or isinstance(x, torch._subclasses.FakeTensor):\n"
        f"            {extra}\n"
        "        return y\n",
    )


FOREVER = eval_only(
    "from torch._higher_order_ops.while_loop import while_loop\n"
    "            i, y = while_loop(lambda i, z: i >= 0, lambda i, z: (i + 1, z + 1.0),"
    " (torch.zeros((), dtype=torch.long), y))"
)


@LINUX
def test_a_graph_that_never_ends_is_refused_before_it_runs(box: Sandbox) -> None:
    """A while_loop that never ends in the exported graph only: control-flow operators
    are refused when the measuring child loads the archive (before, the child was
    killed at its wall clock, at least MIN_MEASURE_S)."""
    evaluation = run(box, FOREVER, timeout_s=20)
    assert evaluation.status is Status.FAILED_EXPORT, evaluation.error
    assert "control flow" in evaluation.error
    assert evaluation.spent_kwh > 0  # the training it did still counts


@LINUX
def test_a_memory_bomb_in_the_graph_is_the_candidates_oom(box: Sandbox) -> None:
    """A terabyte tensor allocated by the graph at measuring time, not at export."""
    evaluation = run(box, eval_only("y = y + torch.ones(1 << 40)[:1]"))
    assert evaluation.status is Status.OOM, evaluation.error


@LINUX
def test_nan_logits_are_measured_as_such(box: Sandbox) -> None:
    """NaN logits in the exported graph: an accuracy from what the graph answers (argmax
    of NaN is class 0), never a NaN or forged figure; the rules' inputs stay finite."""
    evaluation = run(box, eval_only("y = y * float('nan')"))
    assert evaluation.status is Status.OK, evaluation.error
    assert (m := evaluation.metrics) is not None and 0.0 <= m.A2 < 0.2 and 0.0 <= m.A1 < 0.2
    assert all(v == v for v in (m.A1, m.A2, m.E1, m.E2, m.F)) and m.P == SMALL_P
