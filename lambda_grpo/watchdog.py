"""The driver's watchdog: a run stops, naming the cause, as soon as one of its Ray actors dies (verl glue).

verl 0.9.1 notices a dead worker only where it waits for that worker's answer, and not always then:
- a vLLM rollout replica that dies fails the requests routed to it; verl's agent loop marks those trajectories
  failed and the sync replay buffer trains on what is left (failed sessions are dropped, their groups padded):
  with one of two replicas dead, every later step trains on about half of its responses, silently. When every
  replica is dead, the step stops with "Sync replay buffer selected terminal groups with no materializable
  trajectories. Enable trainer.v1.sampler.sync_refill_failed_groups ...", which names neither vLLM nor the cause;
- an actor rank that dies mid-update leaves the other ranks in a gloo collective, which gives up after
  `actor_rollout_ref.actor.nccl_timeout` (600 s); the trainer's RPC fails at once with an ActorDiedError,
  but what the console shows is the end of a traceback through verl's worker group;
- a node that leaves takes its actors along, with the same two outcomes.

`Watchdog` runs in the driver (`python -m lambda_grpo.main`, the job's entrypoint under `ray job submit`). Once
verl has started Ray it reads the run's actors from Ray's GCS every `poll_s` seconds (`dead_actors`: the one touch
point on Ray's private API). The first actor of this job found dead for a reason that is a fault
(`fault_of`: its worker process died — killed, crashed, out of memory —, its node died, its creation failed;
not an actor that ended because its handle went out of scope, its creator ended, or it was killed on purpose, as
TransferQueue's are at the end) stops the run: the watchdog prints the cause as a `[lambda_grpo]` line (the console
shows it at once) and
interrupts the driver's main thread, which is waiting in verl's `ray.get` on the TaskRunner. The driver then ends
with the cause and exit status 1; Ray ends every actor and worker process of the job when its driver exits.

`stop_on_sigterm` makes SIGTERM (`launch/submit stop`, `ray job stop`, a scheduler preempting the node) end the
run the same way, naming the signal, with exit status 143 (Ray's job supervisor sends SIGKILL 3 s later). Once
verl's `ray.init` has replaced that handler with Ray's (`sys.exit(15)`), `sigterm_fault` names the same cause.
"""

from __future__ import annotations

import _thread
import functools
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

POLL_S = 2.0
"""Seconds between two reads of the actor table (one GCS request each)."""

FAULT_REASONS = {"WORKER_DIED": "its worker process died", "NODE_DIED": "its node died"}
"""Reasons of Ray's ActorDiedErrorContext that are faults. Not: OWNER_DIED (an actor ends with the process that
created it: every actor of a run when its TaskRunner ends, and otherwise after a death reported for that process),
RAY_KILL (TransferQueue kills its actors at the end), OUT_OF_SCOPE, REF_DELETED, UNSPECIFIED."""

INTENDED_EXIT = "INTENDED_USER_EXIT"
"""Ray's worker exit type of an actor that ended itself (`ray.actor.exit_actor`): WORKER_DIED, but no fault."""

OTHER_FAULTS = {"creation_task_failure_context": "its constructor raised",
                "oom_context": "Ray's memory monitor killed it",
                "runtime_env_failed_context": "its runtime environment could not be set up",
                "actor_unschedulable_context": "it cannot be scheduled"}
"""The other kinds of Ray's ActorDeathCause, each a fault."""

ROLES = {"WorkerDict": "a trainer rank: actor and reference model", "vLLMHttpServer": "a vLLM rollout server",
         "AgentLoopWorker": "an agent-loop worker", "LambdaGRPOTaskRunner": "the trainer's driver"}
"""What verl's actors are, for the message (by class name)."""

SIGTERM_EXIT = 128 + signal.SIGTERM


@dataclass(frozen=True)
class Fault:
    """Why the run stops: a sentence naming what failed, and the exit status to end with."""

    message: str
    exit_status: int = 1


SIGTERM_FAULT = Fault("SIGTERM received: the run was stopped (launch/submit stop, ray job stop, or the node is "
                      "shutting down).", exit_status=SIGTERM_EXIT)


def dead_actors(job_id: str) -> list[dict[str, Any]]:
    """The DEAD actors of the Ray job `job_id` (hex), as Ray's GCS reports them (private API, Ray 2.60:
    `ray._private.state.actors`; entries with ActorClassName, Address.IPAddress, Pid, EndTime, DeathCause)."""
    import ray
    from ray._private import state

    return list(state.actors(job_id=ray.JobID.from_hex(job_id), actor_state_name="DEAD").values())


def fault_of(actor: dict[str, Any]) -> str | None:
    """What a dead actor's death says about the run: a sentence when it is a fault, else None."""
    cause = actor.get("DeathCause")
    kind = cause.WhichOneof("context") if cause is not None else None
    # verl's colocated workers' class is create_colocated_worker_cls.<locals>.WorkerDict
    name = str(actor.get("ActorClassName") or "?").rsplit(".", 1)[-1]
    role = f"{ROLES[name]}, " if name in ROLES else ""
    node = (actor.get("Address") or {}).get("IPAddress") or "?"
    where = f"Ray actor {name} ({role}pid {actor.get('Pid') or '?'} on node {node})"
    if kind == "actor_died_error_context":
        context = cause.actor_died_error_context
        reason = type(context).Reason.Name(context.reason)
        if reason not in FAULT_REASONS or INTENDED_EXIT in context.error_message:
            return None
        return f"{where} died: {FAULT_REASONS[reason]}. {_first_line(context.error_message)}"
    if kind in OTHER_FAULTS:
        return f"{where} died: {OTHER_FAULTS[kind]}. {_first_line(str(getattr(cause, kind)))}"
    return None


def _first_line(text: str, limit: int = 400) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit] + " …"


def first_fault(actors: Iterable[dict[str, Any]]) -> str | None:
    """The fault to report among dead actors: the earliest death that is one."""
    faults = sorted((actor.get("EndTime") or 0, fault) for actor in actors if (fault := fault_of(actor)))
    return faults[0][1] if faults else None


class Watchdog:
    """Watches this driver's Ray job from a daemon thread and stops the run at the first fault (module docstring)."""

    def __init__(self, poll_s: float = POLL_S, read_dead: Callable[[str], list[dict[str, Any]]] = dead_actors,
                 report: Callable[[str], None] = functools.partial(print, flush=True)) -> None:
        self.poll_s = poll_s
        self.read_dead = read_dead
        self.report = report
        self.fault: Fault | None = None
        self.job_id: str | None = None
        self.lock = threading.Lock()
        self.finished = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="lambda_grpo-watchdog", daemon=True)

    def start(self) -> "Watchdog":
        self.thread.start()
        return self

    def _watch(self) -> None:
        self.job_id = job_id = self._wait_for_ray()
        while job_id is not None and not self.finished.wait(self.poll_s):
            try:
                message = first_fault(self.read_dead(job_id))
            except Exception as error:  # noqa: BLE001  (a GCS hiccup must not stop the run; the next poll retries)
                self.report(f"[lambda_grpo] watchdog: could not read the actor table ({type(error).__name__}: {error})")
                continue
            if message:
                self.trip(Fault(f"{message} Stopping the run."))
                return

    def _wait_for_ray(self) -> str | None:
        """This driver's job id once verl has started Ray; None if the run finished first."""
        import ray

        while not ray.is_initialized():
            if self.finished.wait(0.5):
                return None
        return ray.get_runtime_context().get_job_id()

    def trip(self, fault: Fault, interrupt: bool = True) -> bool:
        """Record `fault` and report it (once, and only while the run runs); then interrupt the main thread, unless
        the caller is the main thread's own signal handler. Returns whether this call tripped the watchdog."""
        with self.lock:
            if self.finished.is_set() or self.fault is not None:
                return False
            self.fault = fault
        self.report(f"[lambda_grpo] {fault.message}")
        if interrupt:
            _thread.interrupt_main()
        return True

    def stop(self, run_failed: bool = False) -> Fault | None:
        """Stop watching (the run has ended); the fault that stopped it, if any.

        An interrupt sent just before is absorbed here, so it cannot land in the error report that follows.
        With `run_failed` (the run raised) and no fault seen yet, the actor table is read once more: when verl's own
        `ray.get` raised on the dead actor before the next poll (ActorDiedError, at the end of a long traceback),
        the run still ends naming the actor, its role and its node.
        """
        with self.lock:
            self.finished.set()
            fault = self.fault
        if fault is None and run_failed and self.job_id is not None:
            try:
                message = first_fault(self.read_dead(self.job_id))
            except Exception:  # noqa: BLE001  (Ray may be gone by now: the error itself is then what is reported)
                message = None
            self.fault = fault = Fault(message) if message else None
        elif fault is not None:
            try:
                time.sleep(0.2)
            except KeyboardInterrupt:
                pass
        return fault

    def stop_on_sigterm(self) -> None:
        """SIGTERM stops the run as a fault does (call from the main thread), until `ray.init` replaces the handler.

        The handler raises KeyboardInterrupt: Ray's blocking `ray.get` turns exactly that into its own
        KeyboardInterrupt (other exceptions raised by a signal handler are lost inside it). Once verl has called
        `ray.init`, Ray's own handler runs instead (`sys.exit(15)`): `sigterm_fault` recognises that exit."""

        def on_sigterm(signum: int, frame: Any) -> None:
            if self.trip(SIGTERM_FAULT, interrupt=False):
                raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, on_sigterm)


def sigterm_fault(error: BaseException) -> Fault | None:
    """SIGTERM_FAULT when the run ended by Ray's driver SIGTERM handler (ray.init installs `sys.exit(signum)`)."""
    return SIGTERM_FAULT if isinstance(error, SystemExit) and error.code == signal.SIGTERM else None
