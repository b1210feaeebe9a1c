"""The README's code for people runs as written (the extension examples are run in test_select and
test_semi)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_recipe_dict
from PIL import Image

from ssal.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow  # a fresh interpreter, as a user's
def test_the_export_snippet_predicts_in_a_fresh_interpreter(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe_dict(tmp_path / "run", train={"steps": 3}, active={"rounds": 0})))
    assert main(["run", str(recipe), "--no-progress"]) == 0
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "model.pt")]) == 0
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / "photo.jpg")
    block = next(b for b in re.findall(r"```python\n(.*?)```", README.read_text(), re.S) if "model.pt" in b)
    # a new interpreter: what a user's script has imported is only what the snippet imports
    proc = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    classes = torch.load(tmp_path / "model.pt", weights_only=True)["classes"]
    assert proc.stdout.strip() in classes, proc.stdout
