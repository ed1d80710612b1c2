"""``programs``: two sources are the same program when only comments, layout, docstrings,
annotations or the names they bind differ, and a run never trains such a copy again."""

from __future__ import annotations

from pathlib import Path

from lemo_nade.programs import key, same_program
from lemo_nade.records import Proposal, Status
from lemo_nade.search import run_search
from test_search import ScriptedArchitect, ScriptedEvaluator, architect, new_run

__all__ = ["architect"]  # the fixture, imported for its name

PARENT = """import torch.nn as nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        y = self.conv1(x).relu()
        return self.fc(y.mean((2, 3)))
"""

# the kind of copy a 0.5B model sent (bench runs of 2026-12-07): a comment, no `-> None`,
# other names; trained, it gave its original's numbers to the last digit
COPY = '''import torch.nn as nn


class Net(nn.Module):
    """A small net."""

    def __init__(self):
        super().__init__()
        # TODO: add convolutional layer with priority 0.6
        self.features = nn.Conv2d(3, 16, 3, padding=1)  # input [batch, 3, 32, 32]
        self.classifier = nn.Linear(16, 10)

    def forward(self, inputs: "Tensor") -> "Tensor":
        h = self.features(inputs).relu()
        return self.classifier(h.mean((2, 3)))
'''


def test_comments_docstrings_annotations_and_names_aside_it_is_the_same_program() -> None:
    assert same_program(PARENT, COPY) and key(PARENT) == key(COPY)


def test_what_changes_the_model_or_its_training_is_another_program() -> None:
    wider = PARENT.replace("Conv2d(3, 16, 3", "Conv2d(3, 32, 3").replace("(16, 10)", "(32, 10)")
    swapped = PARENT.replace("relu()", "sigmoid()")
    init_lines = (
        "        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)\n",
        "        self.fc = nn.Linear(16, 10)\n",
    )
    reordered = PARENT.replace(init_lines[0] + init_lines[1], init_lines[1] + init_lines[0])
    for other in (wider, swapped, reordered):  # reordered: another random initialisation
        assert not same_program(PARENT, other)


def test_no_attribute_is_renamed_where_the_source_could_reach_it_by_name() -> None:
    init = (
        "\n        for name, p in self.named_parameters():\n"
        "            if 'conv' in name:\n"
        "                nn.init.zeros_(p)\n"
    )
    a = PARENT.replace("self.fc = nn.Linear(16, 10)\n", "self.fc = nn.Linear(16, 10)" + init)
    b = a.replace("conv1", "c1")  # 'conv' no longer matches its weights: another init
    assert not same_program(a, b)
    by_getattr = PARENT.replace("self.fc(y", "getattr(self, 'fc')(y")
    assert not same_program(by_getattr, by_getattr.replace("self.fc =", "self.head ="))


def test_a_lambda_parameter_is_not_confused_with_the_name_it_shadows() -> None:
    a = "def f(z):\n    g = lambda x: x\n    return g(z)\n"
    b = "def f(z):\n    g = lambda x: z\n    return g(z)\n"
    assert not same_program(a, b)
    assert same_program(a, "def f(w):\n    h = lambda q: q\n    return h(w)\n")


def test_sources_that_do_not_parse_compare_by_their_words() -> None:
    assert same_program("class Net(:\n  pass", "class  Net(:\n\n  pass")
    assert not same_program("class Net(:\n  pass", "class Net(:\n  return")


def test_a_run_does_not_train_a_renamed_copy_of_a_candidate_again(
    tmp_path: Path, architect: ScriptedArchitect
) -> None:
    architect.script = [Proposal(code=PARENT), Proposal(code=COPY)]
    run_dir = new_run(tmp_path, iterations=2, search="discover", promote=0)
    evaluate = ScriptedEvaluator()
    first, second = run_search(run_dir, evaluate=evaluate).records
    assert first.code == PARENT
    assert second.attempts[0].status is Status.DUPLICATE
    assert "already trained (iteration 0" in second.attempts[0].error
    assert len(evaluate.jobs) == 2 and evaluate.jobs[1][0].code != COPY  # asked again
