"""`speed privacy` prints the publishable ε of a plan and calibrates noise (real subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from speed.privacy.mechanisms import Skellam
from speed.privacy.pld import publishable_epsilon

SPEED = str(Path(sys.executable).with_name("speed"))


def _json(*args: str):
    done = subprocess.run([SPEED, "privacy", *args, "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_publishable_epsilon_of_a_skellam_plan():
    out = _json("--mechanism", "skellam", "--sigma", "40", "--queries", "500", "--tau", "1", "--delta", "1e-5")
    assert out["epsilon"] == pytest.approx(3.346, abs=0.005)  # docs/privacy.md known answer
    assert out["delta"] == 1e-5 and out["mechanism"] == {"mechanism": "skellam", "sigma": 40.0}
    assert out["rdp_epsilon_cross_check"] >= out["epsilon"]
    many = _json("--sigma", "40", "--queries", "100", "--tau", "1", "0.7")
    assert [r["tau"] for r in many] == [1.0, 0.7] and many[1]["epsilon"] > many[0]["epsilon"]


def test_calibrate_returns_the_least_sigma_meeting_the_target():
    out = _json("calibrate", "--target-epsilon", "4", "--queries", "500", "--delta", "1e-5", "--tau", "1",
                "--mechanism", "skellam")
    assert out["epsilon"] <= 4.0
    assert out["sigma"] == pytest.approx(34.2, abs=0.3)
    # a little less noise misses the target: the σ found is (nearly) the least one
    assert publishable_epsilon(Skellam(out["sigma"] * 0.99), 500, 1e-5) > 4.0


def test_calibrate_lattice_gives_gamma():
    out = _json("calibrate", "--target-epsilon", "2", "--queries", "100", "--mechanism", "lattice")
    assert out["epsilon"] <= 2.0 and out["mechanism"]["mechanism"] == "lattice"
    assert 1 / 30 < out["gamma"] < 1 / 25  # λ ≈ 28 for ε = 2 at Q = 100 (docs/privacy.md table)
