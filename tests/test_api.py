"""The public Python API: `import speed` exposes a small documented surface; the README example runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import speed
from speed.errors import InputError

README = Path(__file__).resolve().parents[1] / "README.md"


def test_public_names_resolve_and_import_speed_stays_light():
    for name in speed.__all__:
        assert getattr(speed, name) is not None
    out = subprocess.run([sys.executable, "-c", "import sys, speed; print('concrete' in sys.modules, 'torch' in sys.modules)"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


@pytest.mark.parametrize("predictions, kwargs, match", [
    (np.zeros((4, 1), dtype=int), {"target_epsilon": 4}, "at least 2 holders"),
    (np.zeros((4, 3)), {"target_epsilon": 4}, "integer class labels"),
    (np.full((4, 3), 5), {"target_epsilon": 4}, "class labels in 0..2"),
    (np.zeros((4, 3), dtype=int), {}, "target_epsilon"),
    (np.zeros((4, 3), dtype=int), {"target_epsilon": 4, "sigma": 3}, "not both"),
    (np.zeros((4, 3), dtype=int), {"target_epsilon": -1}, "target"),
    (np.zeros((4, 3), dtype=int), {"sigma": 3, "tau": 0}, "τ"),
])
def test_bad_input_is_refused_before_any_work(predictions, kwargs, match, tmp_path):
    with pytest.raises(InputError, match=match):
        speed.label(predictions, 3, cache_dir=tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())


def readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_readme_example_runs_through_the_real_encrypted_pipeline(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    env = {**os.environ, "SPEED_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "labels equal the clear noisy argmax: True" in done.stdout
    eps = float(re.search(r"publishable ε = ([0-9.]+)", done.stdout).group(1))
    assert 0 < eps <= 10.0
    ledger_eps = float(re.search(r"ledger ε: ([0-9.]+)", done.stdout).group(1))
    assert ledger_eps == pytest.approx(eps, abs=1e-3)
    assert (tmp_path / "ledger.jsonl").exists() and (tmp_path / "ledger.jsonl.head").exists()
