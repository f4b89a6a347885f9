"""Settings of one deployed labelling job, as Flower's run config carries them.

The ServerApp, the owner's ClientApp and the holders' ClientApps all read the same run
config (``[tool.flwr.app.config]`` of the Flower App, overridden with ``flwr run
--run-config``), so they agree on N, K, the batch size, γ and the seed without any
extra message.  Per-organisation settings (role, partition id, where to keep state and
the holder's teacher) are *node* config (``flower-supernode --node-config``), see
:class:`NodeConfig`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from speed.errors import InputError
from speed.fsutil import atomic_write_json, atomic_write_text
from speed.params import DEFAULT_TARGET_EPSILON, MECHANISMS, ProtocolParams, circuit_spec, default_cache_dir
from speed import validation as opt

__all__ = ["DEFAULT_TARGET_EPSILON", "MECHANISMS", "DeployConfig", "NodeConfig", "app_pyproject", "check_job_inputs",
           "default_cache_dir", "default_workdir", "simulated_node_config", "write_app_dir", "write_summary"]

if TYPE_CHECKING:
    from speed.crypto.spec import CircuitSpec

#: Flower App name / publisher (the FAB id is ``speed/speed-deploy``).
APP_NAME = "speed-deploy"
APP_PUBLISHER = "speed"
SERVER_APP = "speed.deploy.server_app:app"
CLIENT_APP = "speed.deploy.client_app:app"
TASKS = ("digits", "table")
#: Run-config key (only in the app a launcher writes): where the ServerApp writes the job's JSON summary.
SUMMARY_FILE = "summary-file"


def default_workdir() -> Path:
    """Where ``speed deploy local`` keeps the parties' state and its runs: under the cache directory
    (:func:`speed.params.default_cache_dir`)."""
    return default_cache_dir() / "deploy"


def write_summary(path: str | os.PathLike, summary: dict[str, Any], log: Callable[[str], None] = print) -> None:
    """The job summary as the JSON file named by run-config key :data:`SUMMARY_FILE` (atomically: the
    launcher reads all of it or nothing)."""
    atomic_write_json(path, summary, sort_keys=True)
    log(f"job summary written to {path}")


@dataclass(frozen=True)
class DeployConfig:
    """One labelling job.  Field ``foo_bar`` is run-config key ``foo-bar``.

    Flower's run config is flat TOML without a null: "not given" is 0.0 for ``target_epsilon``,
    ``sigma`` and ``max_epsilon``.  :attr:`protocol` maps those once to the
    :class:`speed.params.ProtocolParams` of the job, which checks them (defaults and meanings there).
    """

    task: str = "digits"  # "digits": sklearn digits + CNN teachers; "table": fixed teacher-prediction table
    holders: int = 5  # N: holder slots of the compiled circuit
    classes: int = 0  # K (0: the task's own class count; required for "table")
    queries: int = 10  # Q
    batch_size: int = ProtocolParams.batch_size  # queries per circuit call
    mechanism: str = ProtocolParams.mechanism  # noise: "skellam" (publishable PLD ε) or "lattice" (the paper's)
    target_epsilon: float = 0.0  # publishable ε planned for the Q queries: calibrates σ (or γ); 0 = not given
    sigma: float = 0.0  # Skellam σ given directly (instead of target-epsilon); 0 = not given
    noise: str = ""  # the resolved mechanism as JSON (Mechanism.to_dict; public), written by the launcher
    gamma: float = ProtocolParams.gamma  # γ = 1/λ of the lattice noise (mechanism "lattice")
    tau: float = ProtocolParams.tau  # assumed fraction of holders whose noise stays secret
    delta: float = ProtocolParams.delta
    resolution: int = ProtocolParams.resolution  # lattice steps P per vote
    noise_failure: float = ProtocolParams.noise_failure
    global_p_error: float = ProtocolParams.global_p_error
    seed: int = ProtocolParams.seed  # splits, queries, and (unless production-noise) the holders' noise streams
    production_noise: bool = ProtocolParams.production_noise  # True: holders draw noise from the OS CSPRNG
    # "shared": holders add Δ·v to shares of one pad per batch; "seeded": to seeded pads; "encode": run `encode`
    pad_mode: str = ProtocolParams.pad_mode
    job_id: str = ""  # ledger run id; "" = derived from the settings (a rerun resumes the same job)
    min_holders: int = 0  # continue a batch with at least this many answering holders (0 = all N)
    max_epsilon: float = 0.0  # owner's budget on the data-independent ε (0 = none)
    node_wait: float = 120.0  # seconds the ServerApp waits for N + 1 SuperNodes
    setup_timeout: float = 600.0  # seconds for setup replies (owner compiles / keygen, holders train)
    vote_timeout: float = 120.0  # seconds a holder has to answer one batch
    owner_timeout: float = 300.0  # seconds the owner has for pads / fillers / labels
    poll_interval: float = 0.5  # ServerApp polling of the SuperLink

    def __post_init__(self) -> None:
        # messages name the option of `speed deploy` (the run-config key without the dashes)

        opt.check_choice(self.task, "--task", TASKS)
        opt.check_int(self.holders, "--holders", 2, opt.MAX_HOLDERS)
        if self.classes != 0:
            opt.check_int(self.classes, "--classes", 2, opt.MAX_CLASSES)
        opt.check_positive_int(self.queries, "--queries")
        self.protocol  # noqa: B018  (the protocol's checks: noise, τ, δ, P, batch size, pad mode, seed, ...)
        opt.check_job_id(self.job_id, "--job-id")  # a directory name under the parties' state dirs
        if not 0 <= self.min_holders <= self.holders:
            raise InputError(f"--min-holders: must be in 0..{self.holders} (--holders), got {self.min_holders}")
        opt.check_nonnegative_float(self.max_epsilon, "--max-epsilon")  # 0 = no budget
        if self.task == "table" and self.classes < 2:
            raise InputError("--classes: task 'table' needs the number of classes K ≥ 2")
        if self.noise:
            self._check_noise()
        for name in ("node_wait", "setup_timeout", "vote_timeout", "owner_timeout", "poll_interval"):
            opt.check_positive_float(getattr(self, name), f"--{name.replace('_', '-')}")

    def _check_noise(self) -> None:
        """The resolved mechanism in the run config must be one the other settings allow."""
        from speed.privacy.mechanisms import LatticeLaplace, Skellam, mechanism_from_dict

        try:
            data = json.loads(self.noise)
        except ValueError:
            raise InputError(f"noise: not a JSON mechanism dict: {self.noise!r}") from None
        mech = mechanism_from_dict(data)
        want = Skellam if self.mechanism == "skellam" else LatticeLaplace
        if not isinstance(mech, want):
            raise InputError(f"noise {data} does not match --mechanism {self.mechanism}")
        if self.protocol.sigma is not None and mech != Skellam(self.sigma):
            raise InputError(f"noise {data} does not match --sigma {self.sigma:g}")
        if isinstance(mech, LatticeLaplace) and mech.resolution != self.resolution:
            raise InputError(f"noise {data} does not match --resolution {self.resolution}")
        if isinstance(mech, LatticeLaplace) and self.protocol.target_epsilon is None and mech.gamma != self.gamma:
            raise InputError(f"noise {data} does not match --gamma {self.gamma:g}")

    # -- run config <-> dataclass
    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> "DeployConfig":
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            key = f.name.replace("_", "-")
            if key not in run_config:
                continue
            value = run_config[key]
            default = f.default
            if isinstance(default, bool):
                value = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
            elif isinstance(default, int):
                value = int(value)
            elif isinstance(default, float):
                value = float(value)
            else:
                value = str(value)
            kwargs[f.name] = value
        return cls(**kwargs)

    def to_run_config(self) -> dict[str, Any]:
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}

    def run_config_args(self) -> list[str]:
        """``flwr run --run-config`` arguments setting every field (TOML values)."""
        out = []
        for key, value in self.to_run_config().items():
            # Flower splits on quotes without escapes: a JSON string value goes as a TOML literal '...'
            text = f"'{value}'" if isinstance(value, str) and '"' in value and "'" not in value else json.dumps(value)
            out += ["--run-config", f"{key}={text}"]
        return out

    # -- derived values
    @property
    def protocol(self) -> ProtocolParams:
        """The job's protocol parameters, the run config's "not given" 0.0 mapped to None (checked when
        the config is made)."""
        return ProtocolParams(
            mechanism=self.mechanism, target_epsilon=self.target_epsilon or None, sigma=self.sigma or None,
            gamma=self.gamma, tau=self.tau, delta=self.delta, resolution=self.resolution, batch_size=self.batch_size,
            noise_failure=self.noise_failure, global_p_error=self.global_p_error, pad_mode=self.pad_mode,
            seed=self.seed, production_noise=self.production_noise,
        )

    @property
    def noise_scale(self) -> float:
        """λ = 1/γ of the lattice noise (the paper's); see :meth:`noise_mechanism` for the noise the job runs."""
        return 1.0 / self.gamma

    @property
    def planned_target_epsilon(self) -> float | None:
        """The target ε the noise was calibrated to (None when σ or γ was given directly)."""
        return self.protocol.planned_target_epsilon

    def noise_mechanism(self):
        """The job's noise :class:`speed.privacy.mechanisms.Mechanism`: from ``noise`` (resolved by the
        launcher), else :meth:`speed.params.ProtocolParams.noise_mechanism` for Q queries.  Calibrating
        takes seconds to a minute: the launchers resolve it once (:meth:`resolved`) so that no
        ClientApp process repeats it."""
        from speed.privacy.mechanisms import mechanism_from_dict

        if self.noise:
            return mechanism_from_dict(json.loads(self.noise))
        return self.protocol.noise_mechanism(self.queries)

    def resolved(self) -> "DeployConfig":
        """This config with ``noise`` set (calibrated here if needed): what the run config carries."""
        if self.noise:
            return self
        return replace(self, noise=json.dumps(self.noise_mechanism().to_dict(), sort_keys=True, separators=(",", ":")))

    @property
    def required_holders(self) -> int:
        return self.min_holders or self.holders

    @property
    def effective_job_id(self) -> str:
        """Ledger run id.  The default depends on everything that defines the queries and noise."""
        if self.job_id:
            return self.job_id
        key = {k: v for k, v in asdict(self).items() if k in (
            "task", "holders", "classes", "queries", "batch_size", "gamma", "tau", "resolution", "seed",
            "production_noise")}
        if self.mechanism != "lattice" or self.target_epsilon:  # lattice jobs of γ keep their earlier ids
            key.pop("gamma")
            key.update(mechanism=self.mechanism, sigma=self.sigma, target_epsilon=self.planned_target_epsilon,
                       delta=self.delta)
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
        return f"{self.task}-N{self.holders}-Q{self.queries}-s{self.seed}-{digest}"

    def circuit_spec(self, num_classes: int) -> CircuitSpec:
        """The circuit the owner compiles (:func:`speed.params.circuit_spec`, the job's noise)."""
        return circuit_spec(self.protocol, num_classes, self.holders, self.noise_mechanism())


def check_job_inputs(config: DeployConfig, teacher_table: str | os.PathLike | None,
                     option: str = "--teacher-table") -> None:
    """What a federation needs before any process starts: the holders' teacher table (task
    "table": a readable .npy of integer labels in 0..K−1, a row per query and a column per
    holder, or one column for all) or, for task "digits", enough public points for the queries.
    """
    import numpy as np


    if config.task == "digits":
        from speed.learning import load_dataset

        pool = len(load_dataset("digits").y_test) // 2  # speed.learning.make_splits' default public pool
        if config.queries > pool:
            raise InputError(f"--queries {config.queries} exceeds the public pool of {pool} digits")
        return
    if teacher_table is None or str(teacher_table) == "":
        raise InputError(f"task 'table' needs {option} <file.npy>")
    path = opt.check_existing_file(teacher_table, option, "teacher table")
    try:
        table = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{option}: cannot read {path} as a .npy array ({' '.join(str(exc).split())})") from None
    if table.ndim not in (1, 2) or table.shape[0] < config.queries or (
            table.ndim == 2 and table.shape[1] < config.holders):
        raise InputError(f"{option}: {path} has shape {table.shape}; need ({config.queries}+ queries, "
                         f"{config.holders} holders) or ({config.queries}+,)")
    part = np.asarray(table[: config.queries] if table.ndim == 1 else table[: config.queries, : config.holders])
    if not (np.issubdtype(part.dtype, np.integer) or np.issubdtype(part.dtype, np.floating)) or (
            np.issubdtype(part.dtype, np.floating) and not np.all(np.isfinite(part) & (part == np.round(part)))):
        raise InputError(f"{option}: {path} must hold integer class labels, got dtype {part.dtype}")
    if part.size and (part.min() < 0 or part.max() >= config.classes):
        raise InputError(f"{option}: {path} holds labels in {int(part.min())}..{int(part.max())}; "
                         f"--classes {config.classes} needs 0..{config.classes - 1}")


@dataclass(frozen=True)
class NodeConfig:
    """What one organisation's SuperNode is: ``--node-config "role='holder' partition-id=3 ..."``.

    Keys: ``role`` (``owner`` or ``holder``), ``partition-id`` (holders: 0..N−1),
    ``state-dir`` (durable state: the owner's secret key, ledger and labels; the holder's
    copy of the program and evaluation keys), ``cache-dir`` (compiled circuits, teacher
    checkpoints; default ``$SPEED_CACHE_DIR`` or ``.speed-cache``), ``teacher-table`` (task "table": a ``.npy``
    array whose column ``partition-id`` is this holder's teacher's predictions),
    ``holder-keys`` (owner: directory of pinned holder pad keys, see :mod:`speed.deploy.sealing`).
    """

    role: str
    partition_id: int = -1
    state_dir: Path = Path()
    cache_dir: Path = field(default_factory=default_cache_dir)
    teacher_table: str = ""
    holder_keys: str = ""  # owner: directory of pinned holder pad keys (holder-<i>.pub)

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any], node_id: int = 0) -> "NodeConfig":
        role = str(node_config.get("role", "")).strip().lower()
        if role not in ("owner", "holder"):
            raise InputError(f"node-config role must be 'owner' or 'holder', got {role!r}")
        pid = int(node_config.get("partition-id", -1))
        if role == "holder" and pid < 0:
            raise InputError("a holder SuperNode needs partition-id=<0..N-1> in its node-config")
        default_state = Path(tempfile.gettempdir()) / f"speed-node-{role}-{pid if role == 'holder' else node_id}"
        state = Path(str(node_config.get("state-dir", "")) or default_state).expanduser()
        cache = Path(str(node_config.get("cache-dir", "")) or default_cache_dir())
        return cls(role=role, partition_id=pid, state_dir=state, cache_dir=cache.expanduser(),
                   teacher_table=str(node_config.get("teacher-table", "")),
                   holder_keys=str(node_config.get("holder-keys", "")))

    @classmethod
    def from_context(cls, node_config: Mapping[str, Any], run_config: Mapping[str, Any],
                     node_id: int = 0) -> "NodeConfig":
        """The node's role from its node config, or, in Flower's simulation engine, from its partition id.

        A simulated SuperNode's node config holds only ``partition-id`` and ``num-partitions``
        (no ``role``).  When the run config names a ``simulation-dir`` (``speed deploy
        simulate`` writes it), the N + 1 simulated nodes map to SPEED parties as
        :func:`simulated_node_config` says; a node that states its ``role`` is never remapped.
        """
        sim_dir = str(run_config.get(SIM_DIR, "") or "")
        if "role" not in node_config and sim_dir and NUM_PARTITIONS in node_config:
            node_config = simulated_node_config(
                int(node_config.get(PARTITION_ID, -1)), int(node_config[NUM_PARTITIONS]), Path(sim_dir),
                cache_dir=str(run_config.get(SIM_CACHE_DIR, "") or ""),
                teacher_table=str(run_config.get(SIM_TEACHER_TABLE, "") or ""))
        return cls.from_node_config(node_config, node_id)


#: Run-config keys of a simulated federation (only in the app ``speed deploy simulate`` writes).
SIM_DIR, SIM_CACHE_DIR, SIM_TEACHER_TABLE = "simulation-dir", "simulation-cache-dir", "simulation-teacher-table"
#: Node-config keys Flower's simulation engine gives every virtual SuperNode.
PARTITION_ID, NUM_PARTITIONS = "partition-id", "num-partitions"


def simulated_node_config(partition_id: int, num_partitions: int, sim_dir: Path, cache_dir: str = "",
                          teacher_table: str = "") -> dict[str, Any]:
    """Node config of simulated SuperNode ``partition_id`` out of ``num_partitions`` = N + 1.

    Partitions 0..N−1 are holders 0..N−1 (state in ``sim_dir/holder-<i>``); partition N is
    the model owner (state in ``sim_dir/owner``, holders' pad keys pinned in
    ``sim_dir/holder-keys`` when that directory exists).  This is what the ``--node-config``
    of each ``flower-supernode`` says in a real deployment.
    """
    holders = num_partitions - 1
    if holders < 2 or not 0 <= partition_id <= holders:
        raise InputError(f"simulated node: partition-id {partition_id} of {num_partitions} partitions "
                         "(need N + 1 partitions: holders 0..N-1, owner N)")
    if partition_id == holders:
        out: dict[str, Any] = {"role": "owner", "state-dir": str(sim_dir / "owner")}
        if (sim_dir / "holder-keys").is_dir():
            out["holder-keys"] = str(sim_dir / "holder-keys")
    else:
        out = {"role": "holder", "partition-id": partition_id, "state-dir": str(sim_dir / f"holder-{partition_id}")}
        if teacher_table:
            out["teacher-table"] = teacher_table
    if cache_dir:
        out["cache-dir"] = cache_dir
    return out


def app_pyproject(config: DeployConfig | None = None, extra: Mapping[str, str] | None = None) -> str:
    """``pyproject.toml`` of the Flower App (the FAB holds only this file: the code is ``speed``).

    ``extra``: more run-config keys (``speed deploy simulate`` adds ``simulation-dir`` etc.;
    Flower only accepts ``--run-config`` overrides of keys that the app declares).
    """
    config = config or DeployConfig()
    lines = [
        "# Flower App for SPEED (generated by `speed deploy app`). The ServerApp and ClientApp live in",
        "# the installed `speed` package: every machine of the federation needs `pip install speed`.",
        "[build-system]",
        'requires = ["hatchling"]',
        'build-backend = "hatchling.build"',
        "",
        "[project]",
        f'name = "{APP_NAME}"',
        'version = "0.1.0"',
        'description = "SPEED: encrypted noisy-argmax labelling (holders, aggregation server, model owner)"',
        "dependencies = []",
        "",
        "[tool.flwr.app]",
        f'publisher = "{APP_PUBLISHER}"',
        "",
        "[tool.flwr.app.components]",
        f'serverapp = "{SERVER_APP}"',
        f'clientapp = "{CLIENT_APP}"',
        "",
        "[tool.flwr.app.config]",
    ]
    for key, value in {**config.to_run_config(), **dict(extra or {})}.items():
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def write_app_dir(directory: str | os.PathLike, config: DeployConfig | None = None,
                  extra: Mapping[str, str] | None = None) -> Path:
    """Write the Flower App project (``flwr run DIRECTORY <connection>`` submits it)."""
    directory = Path(directory)
    atomic_write_text(directory / "pyproject.toml", app_pyproject(config, extra))
    return directory
