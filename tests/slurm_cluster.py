"""A real one-node Slurm cluster for the tests (Debian's slurm-wlm: munged, slurmctld, slurmd),
private to the test session: its own config, ports, state and log files under a temporary folder.
``.ci/run`` installs the package; without it (or without root to start the daemons) the tests
that need it skip, saying why. Facts behind the config: ../shared/notes/slurm-one-node.md."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _find(name: str) -> str | None:
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)), None)


def _start_munge() -> str | None:
    """munged, unless one answers already; why not, or None."""
    if os.path.exists("/run/munge/munge.socket.2"):
        return None
    if os.geteuid() != 0:
        return "munged is not running and starting it needs root"
    os.makedirs("/run/munge", exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    done = subprocess.run(["su", "-s", "/bin/sh", "munge", "-c", _find("munged") or "munged"], capture_output=True, text=True, timeout=30)
    return None if done.returncode == 0 else f"munged did not start: {done.stderr.strip()[:200]}"


def _conf(folder: Path, host: str) -> str:
    return "\n".join([
        "ClusterName=copylora-tests", f"SlurmctldHost={host}", "SlurmUser=root",
        f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}", "AuthType=auth/munge",
        f"StateSaveLocation={folder}/state", f"SlurmdSpoolDir={folder}/spool",
        f"SlurmctldPidFile={folder}/slurmctld.pid", f"SlurmdPidFile={folder}/slurmd.pid",
        f"SlurmctldLogFile={folder}/slurmctld.log", f"SlurmdLogFile={folder}/slurmd.log",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core", "ReturnToService=2", "MpiDefault=none",
        "SchedulerParameters=sched_interval=1", "KillWait=30",
        f"NodeName={host} CPUs={os.cpu_count() or 2} RealMemory=2000 State=UNKNOWN",
        f"PartitionName=tests Nodes={host} Default=YES MaxTime=INFINITE State=UP", "",
    ])


def start_cluster(folder: Path) -> tuple[dict[str, str] | None, str]:
    """(the environment its clients need, "") or (None, why it cannot start)."""
    missing = [name for name in DAEMONS if _find(name) is None]
    if missing:
        return None, f"Slurm is not installed ({', '.join(missing)} missing; apt-get install slurm-wlm)"
    if os.geteuid() != 0:
        return None, "starting slurmctld and slurmd needs root here"
    why = _start_munge()
    if why:
        return None, why
    for name in ("state", "spool"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    host = socket.gethostname().split(".")[0]
    conf = folder / "slurm.conf"
    conf.write_text(_conf(folder, host))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    for daemon in ("slurmctld", "slurmd"):
        done = subprocess.run([_find(daemon) or daemon, "-f", str(conf)], env=env, capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            stop_cluster(folder)
            return None, f"{daemon} did not start: {(done.stderr or done.stdout).strip()[:300]}"
        time.sleep(0.5)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True, timeout=30).stdout.strip()
        if state.startswith("idle"):
            return {"SLURM_CONF": str(conf)}, ""
        time.sleep(0.5)
    stop_cluster(folder)
    return None, f"the test node did not come up (sinfo says {state!r}; see {folder}/slurmctld.log)"


def stop_cluster(folder: Path) -> None:
    """By the pids in their pid files, never by name (another Slurm may run on this machine)."""
    for daemon in ("slurmd", "slurmctld"):
        try:
            os.kill(int((folder / f"{daemon}.pid").read_text().strip()), signal.SIGTERM)
        except (OSError, ValueError):
            pass


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slurm")
    env, why = start_cluster(folder)
    if env is None:
        pytest.skip(why)
    yield env
    stop_cluster(folder)
