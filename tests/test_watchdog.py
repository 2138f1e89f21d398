"""lambda_grpo.watchdog: which actor deaths stop a run, how the driver is stopped, and the touch point on Ray's
private actor table (its signature and death-cause messages, pinned here, fail these tests when Ray changes them).
The `ray` test runs the watchdog in a driver of a real local Ray and kills an actor with SIGKILL."""

import inspect
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest
from ray._private import state
from ray.core.generated import common_pb2

from lambda_grpo.watchdog import (
    FAULT_REASONS,
    OTHER_FAULTS,
    SIGTERM_EXIT,
    Fault,
    Watchdog,
    fault_of,
    first_fault,
    sigterm_fault,
)

Reason = common_pb2.ActorDiedErrorContext.Reason


def died(reason: str, class_name: str = "vLLMHttpServer", end: int = 5, message: str = "The actor is dead because "
         "its worker process has died. Worker exit type: SYSTEM_ERROR") -> dict:
    cause = common_pb2.ActorDeathCause(actor_died_error_context=common_pb2.ActorDiedErrorContext(
        reason=Reason.Value(reason), error_message=message))
    return {"ActorClassName": class_name, "Pid": 4242, "Address": {"IPAddress": "127.0.0.2"}, "EndTime": end,
            "DeathCause": cause}


def test_the_private_touch_points_are_as_pinned():
    assert {"actor_id", "job_id", "actor_state_name"} <= set(inspect.signature(state.actors).parameters)
    assert set(FAULT_REASONS) | {"OWNER_DIED", "RAY_KILL", "OUT_OF_SCOPE", "REF_DELETED", "UNSPECIFIED"} == \
        set(Reason.keys())
    assert set(OTHER_FAULTS) | {"actor_died_error_context"} == {
        field.name for field in common_pb2.ActorDeathCause.DESCRIPTOR.oneofs_by_name["context"].fields}


@pytest.mark.parametrize("reason", ["OWNER_DIED", "RAY_KILL", "OUT_OF_SCOPE", "REF_DELETED", "UNSPECIFIED"])
def test_actors_ended_on_purpose_or_with_their_creator_are_no_fault(reason):
    """Every actor of a run that finished dies with OWNER_DIED once its TaskRunner ends (seen on a real run)."""
    assert fault_of(died(reason)) is None
    assert fault_of({"ActorClassName": "X", "DeathCause": None}) is None
    assert fault_of(died("WORKER_DIED", message="Worker exit type: INTENDED_USER_EXIT Worker exit detail: "
                                                "User requested to exit the actor.")) is None


def test_a_killed_worker_is_named_with_its_node_and_cause():
    message = fault_of(died("WORKER_DIED"))
    assert message.startswith("Ray actor vLLMHttpServer (a vLLM rollout server, pid 4242 on node 127.0.0.2) died: "
                              "its worker process died.")
    rank = fault_of(died("WORKER_DIED", "create_colocated_worker_cls.<locals>.WorkerDict"))
    assert rank.startswith("Ray actor WorkerDict (a trainer rank: actor and reference model, pid 4242 on node")
    assert "Worker exit type: SYSTEM_ERROR" in message
    oom = {**died("WORKER_DIED"), "DeathCause": common_pb2.ActorDeathCause(
        oom_context=common_pb2.OomContext(error_message="Task was killed due to the node running low on memory."))}
    assert "Ray's memory monitor killed it" in fault_of(oom) and "low on memory" in fault_of(oom)


def test_the_first_fault_is_reported():
    actors = [died("OWNER_DIED", "AgentLoopWorker", end=1), died("NODE_DIED", "WorkerDict", end=3),
              died("WORKER_DIED", "vLLMHttpServer", end=2), died("RAY_KILL", "TQController", end=0)]
    assert "vLLMHttpServer" in first_fault(actors)
    assert "its node died" in fault_of(died("NODE_DIED"))
    assert first_fault([died("OUT_OF_SCOPE")]) is None and first_fault([]) is None


def test_a_fault_interrupts_the_main_thread_once(capsys):
    reports = []
    calls = iter([[], [died("RAY_KILL")], [died("WORKER_DIED")]])
    watchdog = Watchdog(poll_s=0.05, read_dead=lambda job: next(calls), report=reports.append)
    watchdog._wait_for_ray = lambda: "01000000"
    with pytest.raises(KeyboardInterrupt):
        watchdog.start()
        time.sleep(10)
    assert watchdog.stop().message.endswith("Stopping the run.")
    assert len(reports) == 1 and reports[0].startswith("[lambda_grpo] Ray actor vLLMHttpServer")
    assert not watchdog.trip(Fault("later")) and watchdog.fault.exit_status == 1


def test_a_run_verl_stopped_on_a_dead_actor_is_named_by_it():
    """verl's ray.get may raise ActorDiedError before the next poll: the run that failed still names the actor."""
    watchdog = Watchdog(poll_s=600, read_dead=lambda job: [died("OWNER_DIED", "AgentLoopWorker", end=9),
                                                           died("WORKER_DIED", "WorkerDict", end=7)],
                        report=lambda line: None)
    watchdog._wait_for_ray = lambda: "01000000"
    watchdog.start()
    watchdog.thread.join(timeout=0.5)  # it waits `poll_s` before its first read
    assert watchdog.job_id == "01000000"
    fault = watchdog.stop(run_failed=True)
    assert fault.exit_status == 1 and fault.message.startswith("Ray actor WorkerDict (a trainer rank")
    quiet = Watchdog(poll_s=600, read_dead=lambda job: [died("WORKER_DIED")], report=lambda line: None)
    quiet.job_id = "01000000"
    assert quiet.stop() is None  # a run that finished: no look


def test_rays_own_sigterm_exit_is_the_sigterm_fault():
    """ray.init replaces the driver's SIGTERM handler with sys.exit(15) (seen in the two-node e2e)."""
    assert sigterm_fault(SystemExit(signal.SIGTERM)).exit_status == SIGTERM_EXIT
    assert sigterm_fault(SystemExit(1)) is None and sigterm_fault(KeyboardInterrupt()) is None


def test_a_stopped_watchdog_never_interrupts():
    watchdog = Watchdog(poll_s=0.01, read_dead=lambda job: [died("WORKER_DIED")], report=lambda line: None)
    watchdog.stop()
    assert not watchdog.trip(Fault("after the run"))


def test_sigterm_stops_the_run_with_143():
    watchdog = Watchdog(report=lambda line: None)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        watchdog.stop_on_sigterm()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)
    finally:
        signal.signal(signal.SIGTERM, previous)
    fault = watchdog.stop()
    assert fault.exit_status == SIGTERM_EXIT == 143 and fault.message.startswith("SIGTERM received")


DRIVER = textwrap.dedent("""
    import os, signal, time
    import ray
    from lambda_grpo.watchdog import Watchdog

    @ray.remote(num_cpus=0)
    class Victim:
        def pid(self):
            return os.getpid()

    @ray.remote(num_cpus=0)
    def forever():
        time.sleep(600)

    watchdog = Watchdog(poll_s=0.5).start()
    ray.init(num_cpus=1, include_dashboard=False, _temp_dir=os.environ["RAY_TMP"])
    victim = Victim.remote()
    os.kill(ray.get(victim.pid.remote()), signal.SIGKILL)
    killed = time.monotonic()
    try:
        ray.get(forever.remote())
    except KeyboardInterrupt:
        fault = watchdog.stop()
        print(f"STOPPED after {time.monotonic() - killed:.1f} s: {fault.message}", flush=True)
    ray.shutdown()
""")


@pytest.mark.ray
def test_a_driver_waiting_in_ray_get_stops_when_an_actor_is_killed():
    # A short temp dir: Ray's unix sockets live under it and must stay under 107 characters.
    with tempfile.TemporaryDirectory(prefix="lg-wd-", dir="/tmp") as ray_tmp:
        env = {**os.environ, "RAY_TMP": ray_tmp, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
        result = subprocess.run([sys.executable, "-c", DRIVER], env=env, capture_output=True, text=True, timeout=180)
    line = next((line for line in result.stdout.splitlines() if line.startswith("STOPPED")), None)
    assert line, result.stdout + result.stderr[-3000:]
    assert float(line.split()[2]) < 5
    assert "Ray actor Victim" in line and "died: its worker process died" in line
