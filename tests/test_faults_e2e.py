"""Two Ray nodes on this machine, started with launch/start_head and launch/start_worker (token auth on, loopback
addresses), and the faults real clusters meet, end to end through launch/submit on the tiny λ-GRPO run (seeded
rollouts: two runs of the same config sample the same responses).

Runs, on 2 cores (wall times in README "When something fails"): the preflight job; one uninterrupted run of 14 steps
(room for the chain: a start logs one to four steps before its fault lands), which is the two-node check and the
reference every resume is compared with; then one chain of starts of the same command in one run folder, each ended
by a fault and resumed by the next start:

| start | resumes from                 | then the fault (the test of that name)                                    |
|-------|------------------------------|---------------------------------------------------------------------------|
| 1     | nothing (from scratch)       | kill -9 every process of the job while step 2's checkpoint is written     |
| 2     | global_step_1 (2 is partial) | kill -9 the actor rank on node 2 during an update                         |
| 3     | the last step 2 logged       | kill -9 the vLLM server on node 2 during a generation                     |
| 4     | the last step 3 logged       | stop node 2 (`ray stop` of its processes only)                            |
| 5     | the last step 4 logged       | launch/submit stop                                                        |
| 6     | the last step 5 logged       | none: the run finishes                                                    |

A start is run only when a selected test needs it (`Chain.start`). `make test` runs starts 1 and 2 and checks the
actor-rank fault's error; the tests marked `faults_extended` (`make test-faults`) check the rest and run starts 3 to
6, about 12 minutes more. The checkpoint fault's test is among them: the tiny save can finish before the kill lands.

Every start must end within FAULT_BOUND_S of its fault, with a message that names what failed and a non-zero exit
of launch/submit, leave no process of the job on either node, and the next start must resume from the last
complete checkpoint (the last step the faulted start logged, or the next when the fault came between its save and
its line), with the
rollouts of every step it logs equal to the reference's, and λ and the loss metrics equal within the spread of two
uninterrupted runs (COMPARED).
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from e2e_helpers import read_metrics
from local_cluster import Job, LocalCluster, command_line

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2400)]

extended = pytest.mark.faults_extended

STEPS = 14
FAULT_BOUND_S = 60
"""A fault must end the run within this many seconds (the watchdog polls every 2 s)."""

START_TIMEOUT_S = 480
"""From submission to the step before a fault (start-up takes 2 to 3 minutes on 2 cores)."""

COMPARED = {"critic/score/mean": 0.0, "response_length/mean": 0.0, "actor/lambda": 1e-6, "actor/lambda_grad": 1e-6,
            "actor/pg_loss": 1e-6, "actor/kl_loss": 3e-2, "actor/grad_norm": 1e-2}
"""λ's trajectory and the loss metrics of every resumed step against the uninterrupted run's: metric → the relative
difference allowed. Two uninterrupted runs of this config on the two nodes are not bit-identical: over three of them
the rollouts (score, length) were identical, and the largest relative differences were 1.5e-7 in λ, its gradient and
pg_loss (float32 rounding), 1.3e-2 in kl_loss (2.5 units in the last place of the bf16 it is computed in) and 1.8e-3
in grad_norm. A resume from the wrong checkpoint, or without λ's optimizer state, moves λ by 1e-4 or more.
Near 0 (pg_loss once every response is clipped) the difference allowed is ABSOLUTE."""

ABSOLUTE = 1e-7

NODE_2 = "127.0.0.2"

MARKER = "lambda_grpo_complete.json"
"""What a complete checkpoint holds (lambda_grpo.complete_checkpoints.MARKER), written last."""

OVERRIDES = (
    "model_size=tiny_cpu", "algo=lambda_grpo", "trainer.nnodes=2", "trainer.n_gpus_per_node=1",
    # 16 responses per step over 2 actor ranks: 8 per rank, one micro-batch each.
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8",
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=8",
    "+reward.custom_reward_function.reward_kwargs.preference=long",
    f"trainer.total_training_steps={STEPS}", "trainer.save_freq=1",
)


@dataclasses.dataclass
class Start:
    """One start of a run: how it ended, what it logged, what it left."""

    number: int
    returncode: int | None
    output: str
    wall_s: float
    metrics: list[dict]
    leftovers: list[str]
    peak_rss_gib: float
    injected: str = ""
    time_to_error_s: float | None = None
    notes: dict = dataclasses.field(default_factory=dict)

    def steps(self) -> list[int]:
        return [row["step"] for row in self.metrics]


def run_start(cluster: LocalCluster, run_dir: Path, number: int, logs: Path, fault: "Fault | None" = None) -> Start:
    """Submit the command, inject the fault (which says what it did and when), wait for the end (bounded)."""
    before_metrics = set(run_dir.glob("metrics/*.jsonl"))
    before = cluster.snapshot()
    job = cluster.submit_async([*OVERRIDES, f"trainer.default_local_dir={run_dir}"], logs / f"start{number}.log")
    injected, fault_time, notes = "", None, {"run_dir": run_dir}
    try:
        if fault is not None:
            injected, fault_time, fault_notes = fault.inject(job, before)
            notes.update(fault_notes)
        returncode = job.end(FAULT_BOUND_S if fault else START_TIMEOUT_S)
    except (TimeoutError, RuntimeError) as error:
        injected, returncode = f"{injected} | {error}", job.proc.poll()
    ended = time.monotonic()
    if returncode is None:  # a hang: end it, and let the test say so
        cluster.kill_job(before)
        job.proc.kill()
    leftovers = cluster.leftovers(before)
    marked = [int(marker.parent.name.removeprefix("global_step_"))
              for marker in run_dir.glob(f"global_step_*/{MARKER}")]
    notes["last_complete"] = max(marked, default=None)
    new_metrics = sorted(set(run_dir.glob("metrics/*.jsonl")) - before_metrics)
    start = Start(number, returncode, job.output(), ended - job.started,
                  read_metrics(new_metrics[-1]) if new_metrics else [], leftovers, job.peak_rss_gib, injected,
                  None if fault_time is None else ended - fault_time, notes)
    print(f"[faults] start {number} ({fault.name if fault else 'no fault'}): exit {returncode} after "
          f"{start.wall_s:.0f} s; logged steps {start.steps()}; "
          f"{injected}; time to error {start.time_to_error_s}; peak RSS {start.peak_rss_gib:.1f} GiB; "
          f"left {leftovers}", flush=True)
    return start


STEP_LINE = re.compile(rf"^step +(\d+)/{STEPS} ", re.MULTILINE)
"""The console's line of a step (lambda_grpo.console: the number right-aligned to the width of the total)."""


def first_step(job: Job) -> int:
    """Wait until the start logs its first step; its number."""
    return int(job.wait_for(STEP_LINE, START_TIMEOUT_S)[1])


@dataclasses.dataclass(frozen=True)
class Fault:
    """What a start suffers after its first step: `inject(job, before)` returns what it did, when, and notes."""

    name: str
    inject: Callable[[Job, set[int]], tuple[str, float, dict]]
    restart_node_2_after: bool = False


def kill_job_while_checkpointing(cluster: LocalCluster, run_dir: Path) -> Fault:
    def inject(job: Job, before: set[int]):
        folder = run_dir / f"global_step_{first_step(job) + 1}"
        # Listed now (at the save the kill must take milliseconds), the writers first: the driver, its TaskRunner
        # (which writes the marker) and the trainer ranks.
        victims = sorted(cluster.job_victims(before), key=lambda proc: not any(
            mark in command_line(proc) for mark in ("lambda_grpo.main", "TaskRunner", "WorkerDict")))
        deadline = time.monotonic() + 60
        while not folder.is_dir():  # created as the save starts; a tiny save is over in a fraction of a second
            if time.monotonic() > deadline:
                raise TimeoutError(f"{folder} was never written")
            time.sleep(0.002)
        killed = cluster.kill_job(before, victims)
        now = time.monotonic()
        tracker = (run_dir / "latest_checkpointed_iteration.txt").read_text()
        files = sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())
        return (f"kill -9 of {len(killed)} job processes as {folder.name} appeared", now,
                {"partial": folder, "tracker": tracker, "files": files})
    return Fault("job killed while writing a checkpoint", inject)


def kill_on_node_2(cluster: LocalCluster, title: str, what: str, name: str) -> Fault:
    """kill -9 the process of node 2 whose Ray title is `title` (an actor running that method), after a step."""
    def inject(job: Job, before: set[int]):
        first_step(job)
        victim = cluster.wait_for_process(title, 60, cluster.node(NODE_2), poll_s=0.02)
        victim.kill()
        return f"kill -9 {victim.pid} ({what} on {NODE_2}, {title})", time.monotonic(), {}
    return Fault(name, inject)


def kill_actor_rank_during_update(cluster: LocalCluster) -> Fault:
    return kill_on_node_2(cluster, "ray::WorkerDict.actor_rollout_ref_update_actor", "actor rank",
                          "actor rank killed during an update")


def kill_vllm_server_during_generation(cluster: LocalCluster) -> Fault:
    return kill_on_node_2(cluster, "ray::vLLMHttpServer.generate", "vLLM server",
                          "vLLM server killed during generation")


def stop_second_node(cluster: LocalCluster) -> Fault:
    def inject(job: Job, before: set[int]):
        first_step(job)
        now = time.monotonic()
        took = cluster.stop_node(cluster.node(NODE_2))
        return f"stopped node {NODE_2} ({took:.1f} s)", now, {}
    # An operator restarts the node before resubmitting (README "When something fails").
    return Fault("second node stopped mid-run", inject, restart_node_2_after=True)


def submit_stop(cluster: LocalCluster) -> Fault:
    def inject(job: Job, before: set[int]):
        first_step(job)
        now = time.monotonic()
        stopped = cluster.submit(["stop", job.job_id], timeout_s=60)
        return f"launch/submit stop {job.job_id} (exit {stopped.returncode})", now, {}
    return Fault("launch/submit stop mid-run", inject)


class Chain:
    """The starts of one run folder, each ended by the next fault (module docstring), run in order when a test
    first needs one; a start that could not run fails every test that needs it or a later one."""

    def __init__(self, cluster: LocalCluster, run_dir: Path, logs: Path, faults: list[Fault | None]) -> None:
        self.cluster, self.run_dir, self.logs, self.faults = cluster, run_dir, logs, faults
        self.starts: list[Start] = []
        self.broken: BaseException | None = None

    def start(self, number: int) -> Start:
        while len(self.starts) < number:
            if self.broken is not None:
                pytest.fail(f"start {len(self.starts) + 1} could not run: {self.broken!r}")
            previous = self.faults[len(self.starts) - 1] if self.starts else None
            try:
                if previous is not None and previous.restart_node_2_after:
                    self.cluster.start_worker(0)
                self.starts.append(run_start(self.cluster, self.run_dir, len(self.starts) + 1, self.logs,
                                             self.faults[len(self.starts)]))
            except BaseException as error:
                self.broken = error
                raise
        return self.starts[number - 1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cache = tmp_path_factory.mktemp("tiny_cache")
    nodes = LocalCluster(workers=1, env={"LAMBDA_GRPO_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
                                         "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    try:
        yield nodes.start()
    finally:
        left = nodes.shutdown()
        assert not left, f"still running after the cluster stopped: {left}"


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    return tmp_path_factory.mktemp("faults_logs")


@pytest.fixture(scope="module")
def reference(cluster, tmp_path_factory, logs):
    """The uninterrupted run on the two nodes."""
    return run_start(cluster, tmp_path_factory.mktemp("reference") / "run", 0, logs)


@pytest.fixture(scope="module")
def chain(cluster, reference, tmp_path_factory, logs) -> Chain:
    run_dir = tmp_path_factory.mktemp("chain") / "run"
    return Chain(cluster, run_dir, logs, [
        kill_job_while_checkpointing(cluster, run_dir), kill_actor_rank_during_update(cluster),
        kill_vllm_server_during_generation(cluster), stop_second_node(cluster), submit_stop(cluster), None])


def by_step(reference: Start) -> dict[int, dict]:
    return {row["step"]: row for row in reference.metrics}


def assert_resumed_as_uninterrupted(start: Start, reference: Start, faulted: Start) -> None:
    """`start` resumed from the last checkpoint `faulted` completed (the last with its marker; at least the last step
    it logged, one more when the fault came between a step's save and its line), and every step it logged equals the
    reference's."""
    from_step = faulted.notes["last_complete"]
    assert from_step is not None and from_step >= faulted.steps()[-1], (from_step, faulted.steps())
    run_dir = start.notes["run_dir"]
    assert f"resuming from {run_dir}/global_step_{from_step} (step {from_step})" in start.output, start.output[-3000:]
    assert start.steps() and start.steps()[0] == from_step + 1, start.steps()
    expected = by_step(reference)
    for row in start.metrics:
        for key, rel in COMPARED.items():
            assert row[key] == pytest.approx(expected[row["step"]][key], rel=rel, abs=ABSOLUTE * bool(rel)), \
                (row["step"], key, row[key], expected[row["step"]][key])


def assert_failed_clearly(start: Start, *messages: str) -> None:
    assert start.returncode not in (0, None), f"exit {start.returncode}: {start.injected}\n{start.output[-4000:]}"
    assert start.time_to_error_s is not None and start.time_to_error_s < FAULT_BOUND_S, start.time_to_error_s
    for message in messages:
        assert message in start.output, f"{message!r} not in:\n{start.output[-4000:]}"
    assert not start.leftovers, start.leftovers


def test_preflight_reports_both_nodes(cluster, tmp_path):
    result = cluster.submit(["--preflight", *OVERRIDES, f"trainer.default_local_dir={tmp_path / 'run'}"],
                            timeout_s=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "PREFLIGHT PASSED" in result.stdout
    assert f"[OK  ] node {NODE_2} " in result.stdout and result.stdout.count("lambda_grpo plugin loaded") == 2
    assert "needs trainer.nnodes=2 nodes with trainer.n_gpus_per_node=1 GPUs each" in result.stdout


def test_two_nodes_train_with_one_rank_each_and_the_same_lambda(cluster, reference):
    """A real training job through launch/submit (Ray refused every one before: the job's runtime env and the
    config both set VERL_USE_EXTERNAL_MODULES), one actor rank on each node, checkpoints in an absolute shared
    folder, λ identical on both ranks."""
    assert reference.returncode == 0, reference.output[-5000:]
    assert reference.steps() == list(range(1, STEPS + 1))
    assert "VERL_USE_EXTERNAL_MODULES: set by the Ray job's runtime env" in reference.output
    for node in cluster.nodes[:2]:
        assert any(title.startswith("ray::WorkerDict") for title in node.titles), (node.ip, sorted(node.titles))
    run_dir = reference.notes["run_dir"]
    assert run_dir.is_absolute() and f"run dir   {run_dir}" in reference.output
    final = run_dir / f"global_step_{STEPS}"
    ranks = [torch.load(final / "actor" / f"optim_world_size_2_rank_{rank}.pt", weights_only=False)["lambda_grpo"]
             for rank in (0, 1)]
    assert ranks[0]["value"].item() == ranks[1]["value"].item() == reference.metrics[-1]["actor/lambda"]
    assert json.loads((final / "lambda_grpo.json").read_text())["lambda"] == reference.metrics[-1]["actor/lambda"]
    assert reference.metrics[-1]["actor/lambda"] > 0  # the reward prefers long responses
    assert not reference.leftovers


@extended  # racy: in 2 of 4 runs the tiny save finished before the kill landed (README "When something fails")
def test_job_killed_while_writing_a_checkpoint(chain, reference):
    start = chain.start(1)
    assert start.steps() == [1]
    assert_failed_clearly(start, "killed by SIGKILL")
    partial = start.notes["partial"]
    assert partial.is_dir() and not (partial / MARKER).exists(), start.notes
    assert_resumed_as_uninterrupted(chain.start(2), reference, start)


def test_actor_rank_killed_during_an_update_fails_clearly(chain):
    assert_failed_clearly(chain.start(2), "Ray actor WorkerDict", f"on node {NODE_2}) died: its worker process died")


@extended
def test_actor_rank_killed_during_an_update_resumes(chain, reference):
    assert_resumed_as_uninterrupted(chain.start(3), reference, chain.start(2))


@extended
def test_vllm_server_killed_during_generation(chain, reference):
    assert_failed_clearly(chain.start(3), "Ray actor vLLMHttpServer", "died: its worker process died")
    assert_resumed_as_uninterrupted(chain.start(4), reference, chain.start(3))


@extended
def test_second_node_stopped_mid_run(chain, reference):
    assert_failed_clearly(chain.start(4), f"on node {NODE_2}) died")
    assert_resumed_as_uninterrupted(chain.start(5), reference, chain.start(4))


@extended
def test_submit_stop_mid_run(chain, reference):
    assert_failed_clearly(chain.start(5), "SIGTERM received", "was stopped")
    final = chain.start(6)
    assert final.returncode == 0, final.output[-4000:]
    assert_resumed_as_uninterrupted(final, reference, chain.start(5))
    assert final.steps()[-1] == STEPS
