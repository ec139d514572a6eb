"""OpenMP's threads wait passively unless the environment says otherwise (set before torch loads OpenMP)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

# prints the policy torch's OpenMP starts with: the environment's value at the moment torch is first imported
PROBE = """
import os, sys
seen = []
class Probe:
    def find_spec(self, name, path, target=None):
        if name == "torch" and not seen:
            seen.append(os.environ.get("OMP_WAIT_POLICY"))
sys.meta_path.insert(0, Probe())
import {module}
import torch
print(seen[0])
"""


@pytest.mark.parametrize(("module", "given"), [("mmgpt.training.loop", None), ("mmgpt.cli", None),
                                               ("mmgpt.training.loop", "ACTIVE")])
def test_entry_points_set_passive_waiting_before_torch_loads(module: str, given: str | None) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    out = subprocess.run([sys.executable, "-c", PROBE.format(module=module)], env=env, capture_output=True, text=True,
                         timeout=300, check=True).stdout.split()[-1]
    assert out == (given or "PASSIVE")
