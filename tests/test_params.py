"""The protocol's parameters in one place (speed.params): defaults, checks, the noise they resolve to,
the one circuit_spec; the three run configurations embed them; one charge-then-release step."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from speed.errors import BudgetExhaustedError, InputError
from speed.params import DEFAULT_TARGET_EPSILON, ProtocolParams, circuit_spec, default_cache_dir


def test_defaults_and_the_cache_directory(monkeypatch, tmp_path):
    p = ProtocolParams()
    assert (p.mechanism, p.gamma, p.tau, p.delta, p.resolution, p.batch_size) == ("skellam", 3.3, 1.0, 1e-5, 1, 10)
    assert (p.pad_mode, p.range_check, p.seed, p.production_noise) == ("shared", "off", 0, False)
    monkeypatch.delenv("SPEED_CACHE_DIR", raising=False)
    assert default_cache_dir() == Path(".speed-cache") and ProtocolParams().cache_dir == ".speed-cache"
    monkeypatch.setenv("SPEED_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path and ProtocolParams().cache_dir == str(tmp_path)
    assert ProtocolParams(cache_dir=tmp_path / "x").cache_dir == str(tmp_path / "x")
    # every configuration takes the same default
    from speed.deploy.config import NodeConfig
    from speed.pipeline import RunConfig
    from speed.reproduce import ReproduceConfig

    assert RunConfig().cache_dir == ReproduceConfig().cache_dir == str(tmp_path)
    assert NodeConfig.from_node_config({"role": "owner"}).cache_dir == tmp_path == NodeConfig(role="owner").cache_dir


@pytest.mark.parametrize("kwargs, match", [
    (dict(mechanism="gamma"), "--mechanism"),
    (dict(gamma=0), "--gamma"),
    (dict(gamma=float("nan")), "--gamma"),
    (dict(mechanism="lattice", sigma=2.0), "--sigma applies to --mechanism skellam, not lattice"),
    (dict(sigma=2.0, target_epsilon=3.0), "give --target-epsilon or --sigma, not both"),
    (dict(sigma=-1.0), "--sigma"),
    (dict(target_epsilon=-1.0), "--target-epsilon"),  # (0.0 is "not given" in a Flower run config)
    (dict(tau=0.0), "--tau"),
    (dict(delta=1.0), "--delta"),
    (dict(resolution=0), "--resolution"),
    (dict(batch_size=0), "--batch-size"),
    (dict(noise_failure=0.0), "noise_failure"),
    (dict(global_p_error=1.0), "global_p_error"),
    (dict(pad_mode="nope"), "--pad-mode"),
    (dict(range_check="maybe"), "--range-check"),
    (dict(seed=-1), "--seed"),
])
def test_bad_parameters_are_refused_once_with_the_option_named(kwargs, match):
    from speed.deploy.config import DeployConfig
    from speed.pipeline import RunConfig

    with pytest.raises(InputError, match=match):
        ProtocolParams(**kwargs)
    with pytest.raises(InputError, match=match):  # the same refusal through a configuration
        RunConfig(**kwargs)
    if "range_check" not in kwargs:  # a Flower job always runs without the range check
        with pytest.raises(InputError, match=match):
            DeployConfig(**kwargs)


def test_planned_target_and_noise_resolution():
    from speed.privacy.calibrate import calibrate
    from speed.privacy.mechanisms import LatticeLaplace, Skellam

    assert ProtocolParams().planned_target_epsilon == DEFAULT_TARGET_EPSILON
    assert ProtocolParams(target_epsilon=6.0).planned_target_epsilon == 6.0
    assert ProtocolParams(sigma=2.5).planned_target_epsilon is None
    assert ProtocolParams(mechanism="lattice").planned_target_epsilon is None
    assert ProtocolParams(mechanism="lattice", target_epsilon=5.0).planned_target_epsilon == 5.0
    assert ProtocolParams(sigma=2.5).noise_mechanism(10) == Skellam(2.5)
    assert ProtocolParams(mechanism="lattice", gamma=2.0, resolution=3).noise_mechanism(10) == LatticeLaplace(2.0, 3)
    p = ProtocolParams(target_epsilon=8.0, tau=0.9)
    noise = p.noise_mechanism(20)
    assert noise == calibrate("skellam", 8.0, 20, 1e-5, 0.9)[0]
    assert p.noise_mechanism(20) is noise  # calibrated once per setting


def test_the_three_configurations_embed_the_same_parameters(monkeypatch, tmp_path):
    from speed.deploy.config import DeployConfig
    from speed.pipeline import RunConfig
    from speed.reproduce import ReproduceConfig

    monkeypatch.setenv("SPEED_CACHE_DIR", str(tmp_path))
    want = ProtocolParams(sigma=2.5, gamma=2.0, tau=0.8, batch_size=4, seed=3)
    assert RunConfig(holders=3, queries=4, sigma=2.5, gamma=2.0, tau=0.8, batch_size=4, seed=3).protocol == want
    # reproduce: τ is the one the ledger charges (the smallest studied)
    rep = ReproduceConfig(holders=3, queries=(4,), taus=(1.0, 0.8), sigma=2.5, gamma=2.0, batch_size=4, seed=3)
    assert rep.resolved().protocol == want
    # deploy: the run config's "not given" 0.0 becomes None once
    dep = DeployConfig(holders=3, queries=4, sigma=2.5, gamma=2.0, tau=0.8, batch_size=4, seed=3)
    assert dep.protocol == want
    assert DeployConfig().protocol.sigma is None and DeployConfig().protocol.target_epsilon is None
    assert DeployConfig(target_epsilon=3.0).protocol.target_epsilon == 3.0
    # the dataset's target ε for reproduce, the demo's default for the others
    assert ReproduceConfig().resolved().protocol.planned_target_epsilon == 8.0
    assert RunConfig().protocol.planned_target_epsilon == DeployConfig().planned_target_epsilon == 10.0


def test_one_circuit_spec_for_every_path():
    from speed.deploy.config import DeployConfig
    from speed.pipeline import RunConfig
    from speed.pipeline import circuit_spec as demo_spec

    for kwargs in (dict(sigma=2.0), dict(mechanism="lattice", gamma=0.5), dict(sigma=3.0, pad_mode="seeded")):
        run = RunConfig(holders=3, queries=4, batch_size=2, **kwargs)
        noise = run.protocol.noise_mechanism(4)
        spec = circuit_spec(run.protocol, 3, 3, noise)
        assert demo_spec(run, 3) == spec
        assert DeployConfig(task="table", classes=3, holders=3, queries=4, batch_size=2, **kwargs).circuit_spec(3) == spec
        assert (spec.num_holders, spec.num_classes, spec.batch_size) == (3, 3, 2)
    assert circuit_spec(ProtocolParams(sigma=2.0, range_check="classes"), 3, 3,
                        ProtocolParams(sigma=2.0).noise_mechanism(4)).range_check == "classes"


# ----------------------------------------------------------------------------- the ledger
def _ledger(tmp_path, noise, **kw):
    from speed.owner.release import open_ledger

    return open_ledger(tmp_path / "ledger.jsonl", ProtocolParams(**kw), noise, num_holders=3, planned_queries=4)


def test_charge_then_release_charges_the_whole_batch_before_decrypting(tmp_path):
    from speed.owner.release import charge_then_release
    from speed.privacy.mechanisms import Skellam

    noise = Skellam(2.0)
    with _ledger(tmp_path, noise, sigma=2.0) as ledger:
        assert ledger.plan["planned_queries"] == 4 and "target_epsilon" not in ledger.plan

        def decrypt():
            assert ledger.num_queries == 2  # every query of the batch charged before anything is decrypted
            return [7, 8]

        labels, records = charge_then_release(ledger, [0, 1], decrypt, failure_probability=1e-20)
        assert labels == [7, 8] and [r["query_id"] for r in records] == [0, 1]
        spent = ledger.epsilon()["epsilon"]
        # a batch the budget cannot pay for: nothing written, nothing decrypted
        ledger.max_epsilon = spent * 1.0001

        def never():
            raise AssertionError("decrypted a batch that was not charged")

        with pytest.raises(BudgetExhaustedError):
            charge_then_release(ledger, [2, 3], never, failure_probability=1e-20)
        assert ledger.num_queries == 2
        # nothing left to charge (a resumed owner): released without a new record
        assert charge_then_release(ledger, [], lambda: "ok", failure_probability=0.0) == ("ok", [])
        # the before_release hook of speed.protocol: charge only, the caller decrypts
        ledger.max_epsilon = None
        assert charge_then_release(ledger, [2], failure_probability=0.0)[0] is None and ledger.num_queries == 3


def test_open_ledger_lattice_and_resumed_plan(tmp_path):
    from speed.errors import SpeedError
    from speed.privacy.mechanisms import LatticeLaplace, Skellam

    with _ledger(tmp_path, LatticeLaplace(0.5, 1), mechanism="lattice", gamma=0.5, tau=0.9) as ledger:
        assert ledger.noise is None and ledger.defaults["gamma"] == 0.5 and ledger.defaults["tau"] == 0.9
        assert ledger.defaults["mechanism"] == "lattice" and ledger.defaults["num_holders"] == 3
    other = tmp_path / "skellam"
    other.mkdir()
    with _ledger(other, Skellam(2.0), target_epsilon=5.0):
        pass
    with _ledger(other, Skellam(2.0), target_epsilon=5.0) as again:  # resumed: same plan
        assert again.plan["target_epsilon"] == 5.0
    with pytest.raises(SpeedError, match="another plan"):
        _ledger(other, Skellam(2.0), target_epsilon=6.0)


# ------------------------------------------------------------------------------- the CLI
def test_protocol_options_are_declared_once_with_the_defaults_of_the_parameters():
    from speed.cli import options as opt

    parser = argparse.ArgumentParser()
    names = ("mechanism", "target_epsilon", "sigma", "gamma", "tau", "delta", "resolution", "batch_size", "pad_mode",
             "range_check", "seed", "production_noise")
    opt.add_protocol_options(parser, *names)
    args = parser.parse_args([])
    assert ProtocolParams(**{n: getattr(args, n) for n in names}) == ProtocolParams(cache_dir=ProtocolParams().cache_dir)
    assert "default 3.3, the paper's" in parser.format_help() and "default 1e-5" in parser.format_help()
    with pytest.raises(ValueError, match="not protocol options"):
        opt.add_protocol_options(argparse.ArgumentParser(), "holders")
