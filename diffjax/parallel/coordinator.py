"""The job's coordination service in a process of its own, so that losing process 0 is survivable.

`jax.distributed.initialize` starts the coordination service inside process 0. When process 0
dies, every other process's coordination agent finds its long-running error-polling RPC failing
within milliseconds and calls the client's `missed_heartbeat_callback`, whose default is a C++
`LOG(QFATAL)`: the survivor aborts (SIGABRT, "Fatal Python error: Aborted" and some fifty lines)
before any Python code of its own can run. In jaxlib 0.10.2 nothing from Python changes that:

- `jax.distributed.initialize` exposes no callback, and the callback that
  `jaxlib._jax.get_distributed_runtime_client` accepts cannot be a Python function: the binding
  converts it to `std::function<void(absl::Status)>`, and absl::Status has no Python type caster,
  so the call itself throws `std::bad_cast` and the process terminates just the same;
- error polling (`poll_for_error_from_service_at_startup`) and the agent's heartbeat thread are
  not options of the binding; a watchdog thread cannot win the race either (it needs the GIL,
  the agent's C++ callback does not).
(xla/pjrt/distributed/coordination/coordination_service_agent.cc: StartPollingForError and the
heartbeat loop call SetError, which calls the error callback; client.cc passes
`missed_heartbeat_callback` as that callback; client.h's default is the LOG(QFATAL).)

So with an explicit coordinator (`--coordinator_address`, `launch/local.sh`), process 0 runs the
service in this small helper process instead (`jaxlib` only, no JAX, about 0.6 s and 130 MB).
Losing process 0 is then like losing any other peer: the service stays up, the survivors see the
loss in their next collective or through diffjax's watchdog (`peers.py`) and exit with
EXIT_LOST_PROCESS in one line. The helper ignores SIGTERM and SIGINT (a preempted job still needs
the service for its final checkpoint) and stops when process 0 says so at its normal shutdown
(after JAX's shutdown barrier, i.e. when every process is done); if process 0 dies instead, the
helper keeps serving the survivors for the service's heartbeat timeout plus a margin, then exits.
Not covered: the loss of the coordinator's whole host (the helper dies too) and clusters that
JAX detects itself (TPU pods, SLURM), whose service JAX keeps inside process 0.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading

from diffjax.runtime.cli import UserError

READY = "diffjax-coordinator-ready"
STOP = "stop"
START_TIMEOUT_S = 120


class CoordinatorError(UserError, RuntimeError):
    """The helper could not start; the message says why."""


class CoordinatorProcess:
    """The helper, seen from process 0: what `jax.distributed` calls the service.

    `shutdown()` is what JAX's `State.shutdown` calls after the shutdown barrier.
    """

    def __init__(self, bind_address: str, num_processes: int, *, heartbeat_timeout: int | None,
                 shutdown_timeout: int | None = None, recoverable: bool | None = None):
        command = [sys.executable, "-m", "diffjax.parallel.coordinator",
                   f"--bind_address={bind_address}", f"--num_processes={num_processes}"]
        for name, value in (("heartbeat_timeout", heartbeat_timeout),
                            ("shutdown_timeout", shutdown_timeout)):
            if value is not None:
                command.append(f"--{name}={int(value)}")
        if recoverable:
            command.append("--recoverable")
        # Its own stdout only: inheriting the job's output would keep a launcher's pipes open for
        # as long as the helper outlives process 0.
        # The diffjax that runs here, whether installed or imported from a checkout.
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True,
                                        env={**os.environ, "PYTHONPATH": path})
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(self.process.stdout.readline,
                                                                   "")), daemon=True)
        reader.start()
        deadline = START_TIMEOUT_S
        while deadline > 0 and not any(READY in line for line in lines):
            if self.process.poll() is not None:
                reader.join(timeout=2)
                break
            reader.join(timeout=0.1)
            deadline -= 0.1
        if not any(READY in line for line in lines):
            self.process.kill()
            reason = next((line.strip() for line in reversed(lines) if line.strip()),
                          "it did not start")
            raise CoordinatorError(f"could not start the coordination service on {bind_address} "
                                   f"({reason[:300]}); check that the port of "
                                   f"--coordinator_address is free.")

    def shutdown(self) -> None:
        if self.process.poll() is not None:
            return
        try:
            self.process.stdin.write(STOP + "\n")
            self.process.stdin.close()
            self.process.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()


def _serve(args: argparse.Namespace) -> None:
    from jaxlib import _jax

    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, signal.SIG_IGN)
    options = {k: v for k, v in (("heartbeat_timeout", args.heartbeat_timeout),
                                 ("shutdown_timeout", args.shutdown_timeout),
                                 ("recoverable", args.recoverable or None)) if v is not None}
    try:
        service = _jax.get_distributed_runtime_service(args.bind_address, args.num_processes,
                                                       **options)
    except Exception as error:  # noqa: BLE001 - reported to process 0, which raises it
        print(" ".join(str(error).split()), flush=True)
        sys.exit(1)
    print(READY, flush=True)
    # Nothing else is ever written: process 0 may be gone, and its pipe with it.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    told_to_stop = sys.stdin.readline().strip() == STOP  # "" when process 0 is gone
    if not told_to_stop:
        # Process 0 died: the survivors still use the service until they notice (their next
        # collective, diffjax's watchdog, or the service's own heartbeat timeout).
        threading.Event().wait((args.heartbeat_timeout or 100) + 15)
    threading.Timer(30, os._exit, (0,)).start()  # a shutdown that hangs must not keep the port
    service.shutdown()
    os._exit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind_address", required=True)
    parser.add_argument("--num_processes", type=int, required=True)
    parser.add_argument("--heartbeat_timeout", type=int)
    parser.add_argument("--shutdown_timeout", type=int)
    parser.add_argument("--recoverable", action="store_true")
    _serve(parser.parse_args(argv))


if __name__ == "__main__":
    main()
