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


def _munge_answers() -> bool:
    # A socket file alone proves nothing: a munged that died leaves it behind.
    try:
        return subprocess.run([_find("munge") or "munge", "-n"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _start_munge() -> str | None:
    """munged, unless one answers already; why not, or None."""
    if _munge_answers():
        return None
    if os.geteuid() != 0:
        return "munged is not running and starting it needs root"
    os.makedirs("/run/munge", exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    # --force: start over a stale socket left by a munged that died.
    done = subprocess.run(["su", "-s", "/bin/sh", "munge", "-c", f"{_find('munged') or 'munged'} --force"], capture_output=True, text=True, timeout=30)
    if done.returncode != 0 or not _munge_answers():
        return f"munged did not start: {(done.stderr or done.stdout).strip()[:200]}"
    return None


def _conf(folder: Path, host: str) -> str:
    # Addresses are given, never looked up: on a machine whose hostname is not in /etc/hosts,
    # slurmd without NodeAddr hung for more than 30 s resolving it (the CI of stop 34).
    return "\n".join([
        "ClusterName=copylora-tests", f"SlurmctldHost={host}(127.0.0.1)", "SlurmUser=root",
        f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}", "AuthType=auth/munge",
        f"StateSaveLocation={folder}/state", f"SlurmdSpoolDir={folder}/spool",
        f"SlurmctldPidFile={folder}/slurmctld.pid", f"SlurmdPidFile={folder}/slurmd.pid",
        f"SlurmctldLogFile={folder}/slurmctld.log", f"SlurmdLogFile={folder}/slurmd.log",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core", "ReturnToService=2", "MpiDefault=none",
        "SchedulerParameters=sched_interval=1", "KillWait=30",
        f"NodeName={host} NodeAddr=127.0.0.1 NodeHostname={host} CPUs={os.cpu_count() or 2} RealMemory=2000 State=UNKNOWN",
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
        try:
            done = subprocess.run([_find(daemon) or daemon, "-f", str(conf)], env=env, capture_output=True, text=True, timeout=30)
            why = "" if done.returncode == 0 else (done.stderr or done.stdout).strip()[:300]
        except subprocess.TimeoutExpired:
            why = f"no answer in 30 s; its log ends: {_tail(folder / f'{daemon}.log')}"
        if why:
            stop_cluster(folder)
            return None, f"{daemon} did not start: {why}"
        time.sleep(0.5)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            state = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True, timeout=30).stdout.strip()
        except subprocess.TimeoutExpired:
            state = "(sinfo gave no answer in 30 s)"
        if state.startswith("idle"):
            return {"SLURM_CONF": str(conf)}, ""
        time.sleep(0.5)
    stop_cluster(folder)
    return None, f"the test node did not come up (sinfo says {state!r}; slurmd's log ends: {_tail(folder / 'slurmd.log')})"


def _tail(log: Path) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:]) or "(empty)"
    except OSError:
        return "(no log)"


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
