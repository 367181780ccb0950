"""Run, stop and rescale the flow as local supervised processes.

Each flow process runs under a small shim (``python -m control.supervisor shim``) that
forwards SIGINT/SIGTERM to it and records its exit code, so ``adctl stop``/``status``
know how a run ended even though ``adctl run`` returned long before. Layout of the state
directory (default ``.adctl/``)::

    flow.json            the running spec (workers, processes, recovery dir, env, pids)
    run/flow-<i>.pid     shim pid of process i (its own process group)
    run/flow-<i>.rc      exit code of process i, written by the shim when it ends
    logs/flow-<i>.log    stdout+stderr of process i (appended across runs)
    recovery/            Bytewax recovery partitions (initialised on the first run)

Rescaling stops the flow cleanly (SIGINT, then wait) and starts it again from the same
recovery store with the new parallelism; Bytewax resumes from the last snapshot.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from control.launch import FlowLaunch, free_ports

__all__ = ["FlowSpec", "Supervisor", "SupervisorError", "init_recovery", "load_env_file"]

ROOT = Path(__file__).resolve().parents[1]


class SupervisorError(RuntimeError):
    """The flow could not be started, stopped or rescaled."""


@dataclass
class FlowSpec:
    """How to run the flow: parallelism, recovery and the environment it gets."""

    module: str = "flows.detector"
    workers: int = 1
    processes: int = 1
    recovery_dir: str = ""  # default: <state_dir>/recovery
    recovery_parts: int = 4
    snapshot_interval: int = 5  # seconds (Bytewax takes whole seconds)
    backup_interval: int = 0
    base_port: int = 0  # first of `processes` ports for -a; 0 = pick free ports
    env: dict[str, str] = field(default_factory=dict)
    python: str = sys.executable
    cwd: str = str(ROOT)

    def validate(self) -> None:
        """Raise ``SupervisorError`` for counts or intervals out of range."""
        if self.workers < 1 or self.processes < 1:
            raise SupervisorError("--workers and --processes must be at least 1")
        if self.recovery_parts < 1:
            raise SupervisorError("--recovery-parts must be at least 1")
        if self.snapshot_interval < 1:
            raise SupervisorError("--snapshot-interval must be at least 1 second")


def load_env_file(path: str | Path) -> dict[str, str]:
    """``KEY=VALUE`` lines (``#`` comments, optional ``export``, optional quotes)."""
    out: dict[str, str] = {}
    p = Path(path)
    if not p.is_file():
        raise SupervisorError(f"env file {str(path)!r} does not exist")
    for n, line in enumerate(p.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].strip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key.replace("_", "").isalnum():
            raise SupervisorError(f"{path}:{n}: expected KEY=VALUE, got {line!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        out[key] = value
    return out


def init_recovery(directory: Path, parts: int, python: str = sys.executable) -> bool:
    """Create ``parts`` recovery partitions in ``directory`` unless it already has some."""
    directory.mkdir(parents=True, exist_ok=True)
    if any(directory.glob("part-*.sqlite3")):
        return False
    res = subprocess.run(
        [python, "-m", "bytewax.recovery", str(directory), str(parts)],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        raise SupervisorError(f"bytewax.recovery failed: {res.stderr.strip()[-2000:]}")
    return True


def _group_alive(pgid: int) -> bool:
    """True if any process of process group ``pgid`` still exists (zombies aside)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for d in proc.iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                return True
    return False


def _alive(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie (reaping our own children on the way)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not Path("/proc").is_dir()


@dataclass
class ProcState:
    """One flow process as the supervisor sees it."""

    index: int
    pid: int
    alive: bool
    exit_code: int | None
    interrupted: bool = False  # it ended after a forwarded SIGINT/SIGTERM

    @property
    def ok(self) -> bool:
        """Ended by itself with code 0, or ended after being asked to stop."""
        return not self.alive and (self.exit_code == 0 or self.interrupted)


class Supervisor:
    """Start/stop/rescale the flow's processes under ``state_dir``.

    Args:
        state_dir: the directory of the flow's spec, pids and logs.
    """

    def __init__(self, state_dir: str | Path = ".adctl") -> None:
        self.dir = Path(state_dir).resolve()
        self.run_dir = self.dir / "run"
        self.log_dir = self.dir / "logs"

    # ---------------------------------------------------------------- state
    @property
    def state_file(self) -> Path:
        """The JSON file that records the started flow's spec."""
        return self.dir / "flow.json"

    def load_spec(self) -> FlowSpec | None:
        """The spec of the last started flow, or None."""
        if not self.state_file.is_file():
            return None
        data = json.loads(self.state_file.read_text())
        known = {k: v for k, v in data.get("spec", {}).items() if k in FlowSpec.__annotations__}
        return FlowSpec(**known)

    def _save(self, spec: FlowSpec, pids: list[int], addresses: list[str]) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "spec": asdict(spec),
                    "pids": pids,
                    "addresses": addresses,
                    "started": time.time(),
                },
                indent=2,
            )
        )
        tmp.replace(self.state_file)

    def processes(self) -> list[ProcState]:
        """Every process of the last started run (alive or not)."""
        out = []
        for pidfile in sorted(
            self.run_dir.glob("flow-*.pid"), key=lambda p: int(p.stem.split("-")[1])
        ):
            i = int(pidfile.stem.split("-")[1])
            pid = int(pidfile.read_text().strip())
            rc_file = self.run_dir / f"flow-{i}.rc"
            rc, interrupted = None, False
            if rc_file.is_file():
                info = json.loads(rc_file.read_text())
                rc, interrupted = int(info["rc"]), bool(info.get("signal"))
            # the shim leads its own process group: the flow may outlive a dead shim
            out.append(ProcState(i, pid, _alive(pid) or _group_alive(pid), rc, interrupted))
        return out

    def running(self) -> bool:
        """Whether any flow process is alive."""
        return any(p.alive for p in self.processes())

    def last_error(self, index: int) -> str:
        """The flow's own last error line in process ``index``'s log (``error: …`` from
        the flow, or a traceback's last line), or ``""``.
        """
        try:
            lines = self.log_path(index).read_text(errors="replace").splitlines()[-200:]
        except OSError:
            return ""
        for line in reversed(lines):
            if line.startswith("error: ") or line.startswith(("Traceback", "=== adctl")):
                break
        else:
            return ""
        found = [ln for ln in lines if ln.startswith("error: ")]
        if found:
            return found[-1][len("error: ") :]
        tail = [ln for ln in lines if ln.strip() and not ln.startswith("=== adctl")]
        return tail[-1].strip() if tail else ""

    def log_path(self, index: int) -> Path:
        """The log file of process ``index``."""
        return self.log_dir / f"flow-{index}.log"

    # ---------------------------------------------------------------- start
    def start(self, spec: FlowSpec, base_env: Mapping[str, str] | None = None) -> list[int]:
        """Start ``spec.processes`` flow processes; return their (shim) pids."""
        spec.validate()
        if self.running():
            raise SupervisorError(
                f"the flow is already running (state dir {self.dir}); "
                "use `adctl stop` or `adctl scale`"
            )
        if not spec.recovery_dir:
            spec.recovery_dir = str(self.dir / "recovery")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        init_recovery(Path(spec.recovery_dir), spec.recovery_parts, spec.python)
        for pattern in ("flow-*.pid", "flow-*.rc", "flow-*.rc.ready"):
            for old in self.run_dir.glob(pattern):
                old.unlink()
        launch = FlowLaunch(
            target=spec.module,
            workers=spec.workers,
            processes=spec.processes,
            recovery_dir=spec.recovery_dir,
            snapshot_s=int(spec.snapshot_interval),
            backup_s=int(spec.backup_interval),
            addresses=tuple(f"127.0.0.1:{spec.base_port + i}" for i in range(spec.processes))
            if spec.base_port
            else tuple(f"127.0.0.1:{p}" for p in free_ports(spec.processes)),
            python=spec.python,
        )
        env = dict(os.environ if base_env is None else base_env)
        env.update(spec.env)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [spec.cwd, env.get("PYTHONPATH")]))
        pids = []
        for i in range(spec.processes):
            argv = launch.argv(i)
            penv = launch.env(env, i)
            rc_file = self.run_dir / f"flow-{i}.rc"
            shim = [spec.python, "-m", "control.supervisor", "shim", str(rc_file), "--", *argv]
            with open(self.log_path(i), "ab") as log:
                log.write(
                    f"\n=== adctl start {time.strftime('%Y-%m-%dT%H:%M:%S')} "
                    f"{' '.join(argv)}\n".encode()
                )
                log.flush()
                proc = subprocess.Popen(
                    shim,
                    cwd=spec.cwd,
                    env=penv,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            (self.run_dir / f"flow-{i}.pid").write_text(str(proc.pid))
            pids.append(proc.pid)
        self._save(spec, pids, list(launch.addresses))
        self._wait_ready(spec.processes)
        return pids

    def _wait_ready(self, n: int, timeout: float = 60.0) -> None:
        """Wait until every shim has its signal handlers and its flow process running."""
        deadline = time.monotonic() + timeout
        while True:
            ready = sum((self.run_dir / f"flow-{i}.rc.ready").exists() for i in range(n))
            if ready == n:
                return
            ended = [p for p in self.processes() if not p.alive]
            if ended or time.monotonic() > deadline:
                logs = ", ".join(str(self.log_path(p.index)) for p in ended) or str(self.log_dir)
                why = next((e for p in ended if (e := self.last_error(p.index))), "")
                raise SupervisorError(
                    f"flow process(es) did not start: {why or 'no error printed'} (log: {logs})"
                )
            time.sleep(0.05)

    # ---------------------------------------------------------------- stop
    def signal_all(self, sig: int, group: bool = False) -> None:
        """Signal each live shim (it forwards to the flow), or its whole process group."""
        for p in self.processes():
            if p.alive:
                try:
                    if group or not _alive(p.pid):
                        os.killpg(p.pid, sig)  # the whole group, or orphans of a dead shim
                    else:
                        os.kill(p.pid, sig)
                except ProcessLookupError:
                    pass

    def wait(self, timeout: float | None = None, poll: float = 0.2) -> list[ProcState]:
        """Wait until every process has ended (or ``timeout``); return their states."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            procs = self.processes()
            if not any(p.alive for p in procs):
                # the shim writes the rc file just before it exits
                return self.processes()
            if deadline is not None and time.monotonic() >= deadline:
                return procs
            time.sleep(poll)

    def stop(self, timeout: float = 60.0, force: bool = True) -> tuple[bool, list[ProcState]]:
        """SIGINT every process and wait; SIGKILL leftovers after ``timeout`` if ``force``.

        Returns ``(clean, states)``; ``clean`` is False when a kill was needed or a
        process ended with a non-zero code.
        """
        self.signal_all(signal.SIGINT)
        procs = self.wait(timeout)
        killed = False
        if any(p.alive for p in procs):
            if not force:
                raise SupervisorError(f"the flow did not stop within {timeout:g}s")
            killed = True
            self.signal_all(signal.SIGKILL, group=True)
            procs = self.wait(30)
        clean = not killed and all(p.ok for p in procs)
        return clean, procs

    def kill(self) -> None:
        """SIGKILL every process group (a crash, for tests and emergencies)."""
        self.signal_all(signal.SIGKILL, group=True)
        self.wait(30)

    # ---------------------------------------------------------------- scale
    def scale(
        self,
        workers: int,
        processes: int | None = None,
        timeout: float = 60.0,
        base_env: Mapping[str, str] | None = None,
    ) -> FlowSpec:
        """Stop cleanly and restart from the same recovery store with new parallelism."""
        spec = self.load_spec()
        if spec is None:
            raise SupervisorError(f"no flow was started from state dir {self.dir}")
        new = FlowSpec(
            **{**asdict(spec), "workers": workers, "processes": processes or spec.processes}
        )
        new.validate()
        if self.running():
            clean, procs = self.stop(timeout=timeout, force=False)
            if not clean:
                codes = {p.index: p.exit_code for p in procs}
                raise SupervisorError(
                    f"the flow did not stop cleanly (exit codes {codes}); "
                    "not restarting — inspect the logs, then `adctl run`"
                )
        self.start(new, base_env=base_env)
        return new


# -------------------------------------------------------------------- the shim


def _shim(argv: list[str]) -> int:
    """Run ``argv[2:]`` (after ``--``), forward signals, write its exit code to argv[0]."""
    rc_file, sep, *cmd = argv
    if sep != "--" or not cmd:
        print("usage: python -m control.supervisor shim RC_FILE -- CMD...", file=sys.stderr)
        return 2
    received: list[str] = []
    child: subprocess.Popen[bytes] | None = None

    def forward(signum: int, _frame: Any) -> None:
        received.append(signal.Signals(signum).name)
        if child is not None:
            # SIGTERM (e.g. from Kubernetes) becomes the flow's clean SIGINT
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGINT)

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, forward)
    rc = 130
    if not received:
        child = subprocess.Popen(cmd)
        if received:  # a signal came while the child was being started
            child.send_signal(signal.SIGINT)
        Path(rc_file + ".ready").write_text(str(child.pid))
    while child is not None:
        try:
            rc = child.wait()
            break
        except InterruptedError:
            continue
    tmp = Path(rc_file + ".tmp")
    tmp.write_text(json.dumps({"rc": rc, "signal": received[0] if received else None}))
    tmp.replace(rc_file)
    return rc if rc >= 0 else 128 - rc


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "shim":
        sys.exit(_shim(sys.argv[2:]))
    print("usage: python -m control.supervisor shim RC_FILE -- CMD...", file=sys.stderr)
    sys.exit(2)
