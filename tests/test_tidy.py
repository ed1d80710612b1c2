"""Code tidied to what a model file holds (lemo_nade.tidy), on hand-written code;
tests/test_answers.py has the local model's real answers."""

from __future__ import annotations

from lemo_nade.sandbox.policy import check
from lemo_nade.tidy import tidy

BODY = "import torch\nfrom torch import nn\n\n\nclass Net(nn.Module):\n    pass\n"


def test_unused_imports_of_refused_modules_go_used_ones_stay_for_the_policy() -> None:
    """A leftover ``from torchvision import models`` (the local model kept one through
    three repairs) goes; ``os`` that the code uses stays, and the policy refuses it."""
    tidied, notes = tidy("import os\nfrom torchvision import models\n" + BODY)
    assert tidied == BODY and "from torchvision import models" in " ".join(notes)
    assert check(tidied) is None
    used = "import os\n" + BODY.replace("    pass", "    SEP = os.sep")
    tidied, notes = tidy(used)
    assert tidied == used and notes == []
    refused = check(tidied)
    assert refused is not None and "'os'" in refused[1]


# ---- what tidying keeps --------------------------------------------------------------


def test_tidying_keeps_definitions_constants_and_what_they_read() -> None:
    code = '''"""A model."""

from __future__ import annotations

import math  # comments survive
import torch.nn.functional
import torch.nn as nn

WEIGHT_DECAY = float("1e-4")  # read by the trainer, whatever its form
CHANNELS = [16, 32]
HIDDEN = CHANNELS[-1] * 4 + 1
SCALE = torch.nn.functional.relu  # read by Net: stays
unused = torch.nn.functional.relu(x)


@torch.no_grad
def helper(x: "torch.Tensor") -> int:
    return 2


class Net(nn.Module):
    def forward(self, x):
        return SCALE(x) * HIDDEN * math.pi


net = Net(); print(net)
'''
    tidied, notes = tidy(code)
    assert tidied == code.replace("unused = torch.nn.functional.relu(x)\n", "").replace(
        "\n\nnet = Net(); print(net)\n", ""
    )
    assert notes == [
        "removed top-level code: `unused = torch.nn.functional.relu(x)` (line 13), "
        "`net = Net()` (line 26), `print(net)` (line 26)"
    ]


def test_tidying_rewrites_only_an_import_line_that_loses_names() -> None:
    code = (
        "from operator import add, divmod  # ops\n"
        "import math, torch.nn.functional as F, torch.nn as nn\n\n\n"
        "class Net(nn.Module):\n    x = add\n"
    )
    tidied, notes = tidy(code)
    assert tidied.splitlines()[:2] == [
        "from operator import add  # ops",
        "import math, torch.nn as nn",
    ]
    assert tidied.splitlines()[2:] == code.splitlines()[2:]
    assert notes == [
        "removed unused imports: `from operator import divmod` (line 1), "
        "`import torch.nn.functional as F` (line 2)"
    ]


def test_nothing_to_tidy_returns_the_code_as_it_was() -> None:
    assert tidy(BODY) == (BODY, [])
    assert tidy("class Net(:\n") == ("class Net(:\n", [])
