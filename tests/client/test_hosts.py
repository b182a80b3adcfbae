"""Site hosts: what a host imports at its start, so its first window does not."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

FIRST_STEP = """
import sys
import torch
from client.hosts import warm_imports
from mmvm import accel

warm_imports()
before = set(sys.modules)
model = torch.nn.Linear(3, 2)
opt = accel.adam(model.parameters(), 1e-3)
model(torch.randn(4, 3)).square().sum().backward()
opt.step()
print(sorted(m for m in set(sys.modules) - before if m.startswith("torch")))
"""


def test_a_warmed_host_imports_nothing_of_torch_at_its_first_step():
    # a fresh interpreter: this one has imported torch._dynamo long ago
    out = subprocess.run([sys.executable, "-c", FIRST_STEP], cwd=ROOT, text=True,
                         capture_output=True, timeout=120, check=True).stdout
    assert out.strip() == "[]"


def test_without_the_warm_up_the_first_optimizer_imports_dynamo():
    # the premise: if torch stopped importing it lazily, the warm-up could go
    code = FIRST_STEP.replace("warm_imports()\n", "")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, text=True,
                         capture_output=True, timeout=120, check=True).stdout
    assert "'torch._dynamo'" in out
