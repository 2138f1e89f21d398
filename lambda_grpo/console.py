"""What the console shows of a training run: a header, progress, one line per step, a summary (pure formatting).

Everything else that verl, Ray and vLLM print goes to the run's log file (lambda_grpo.run_output); this module
turns the run's config, its log lines and its metrics (verl's `file` logger records) into the lines a person
follows. It imports neither verl nor ray, so it is tested on plain data.

- The header: model, algo and λ options, data, devices, steps, and where the run's files go.
- Progress while the workers start, read from the log (PHASES: verl's and Ray's own messages), and every log
  line our own code tags with TAG, from any process (warnings, λ at start-up).
- One line per training step (STEP_FIELDS: the only list of displayed metrics), one per validation.
- A summary at the end: λ, reward and response length first → last, checkpoint, metrics, plots, log.

Metric names are read defensively: a metric a run does not log is left out of its line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lambda_grpo import VERL_VERSION, __version__
from lambda_grpo.plots import VALIDATION, Series

TAG = "[lambda_grpo]"
"""Log lines that contain this tag reach the console from any process (e.g. the trainer's warnings)."""


@dataclass(frozen=True)
class Shown:
    """One metric of the step line: its label, its verl metric name and its format."""

    label: str
    metric: str
    fmt: str


STEP_FIELDS: tuple[tuple[Shown, ...], ...] = (
    (Shown("reward", "critic/score/mean", "{:.3f}"),),
    (Shown("len", "response_length/mean", "{:.1f}"),),
    # The share of responses that reached data.max_response_length: near 1.0 means responses do not stop.
    (Shown("clip", "response_length/clip_ratio", "{:.2f}"),),
    (Shown("λ", "actor/lambda", "{:+.4f}"),),
    (Shown("∂λ", "actor/lambda_grad", "{:+.1e}"),),
    # The strength of the length preference: f(longest)/f(shortest) in a group (1 = none), else the largest
    # response weight of the batch (1 = uniform).
    (Shown("long/short", "actor/lambda_grpo/weight_long_short_ratio", "{:.2f}"),
     Shown("f max", "actor/lambda_grpo/batch_weight_max", "{:.2f}")),
)
"""The step line's fields, in order; each is the first of its alternatives that the step's record has."""

STEP_SECONDS = ("timing_s/step", "timing_s/testing")
"""verl's timers whose sum is a step's wall time (validation, when it runs, is timed outside the step)."""

SUMMARY_METRICS = (("λ", "actor/lambda", "{:+.4f}"), ("reward", "critic/score/mean", "{:.3f}"),
                   ("length", "response_length/mean", "{:.1f}"))
"""The metrics the summary shows first → last, over the whole run (every start)."""

ETA_WINDOW = 10
"""The ETA assumes the mean duration of this many recent steps."""

RAY_PREFIX = re.compile(
    r"^(?:\x1b\[[0-9;]*m)*\((?:[^()]*\bpid=\d+[^()]*|raylet|autoscaler[^()]*)\)(?:\x1b\[[0-9;]*m)* ?"
)
"""The "(TaskRunner pid=123, ip=…) " prefix Ray puts before each line it forwards from a worker."""

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass(frozen=True)
class Phase:
    """A start-up milestone: a pattern of the log line (verl's or Ray's own message) and what the console says."""

    pattern: re.Pattern[str]
    message: str


PHASES: tuple[Phase, ...] = (
    Phase(re.compile(r"Started a local Ray instance"), "Ray started (a local instance)"),
    Phase(re.compile(r"Connected to Ray cluster"), "joined the Ray cluster"),
    Phase(re.compile(r"actor and ref model engine initialized"), "trainer workers ready (actor, reference model)"),
    Phase(re.compile(r"all initialize finished, ready to fit"), "rollout and reward workers ready"),
    Phase(re.compile(r"Training from scratch"), "no checkpoint to resume: training from scratch"),
    Phase(re.compile(r"Resuming from (?P<path>\S+), setting global step to (?P<step>\d+)"),
          "resuming from {path} (step {step})"),
)
"""Start-up milestones in the order they come; verl's messages are pinned by tests/test_console.py."""

TOTAL_STEPS = re.compile(r"Total training steps: (?P<total>\d+)")
"""verl's trainer says how many steps the run has once it has loaded the data."""

SCHEMES = {
    "lambda": "λ-GRPO",
    "grpo": "GRPO: f_i = μ̄/|o_i| (sequence-mean of token-means)",
    "dapo": "DAPO: f_i = 1 (token-mean)",
    "dr_grpo": "Dr. GRPO: f_i = μ̄/L_max",
}

DEVICES = {"cuda": "GPU", "npu": "NPU", "cpu": "CPU process"}


def clock(seconds: float) -> str:
    """0:07, 12:05, 3:02:10."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _get(cfg: DictConfig, key: str, default: object = None) -> object:
    return OmegaConf.select(cfg, key, default=default)


@dataclass(frozen=True)
class RunPaths:
    """Where a run's files go (lambda_grpo.run_files prepares them)."""

    run_dir: Path
    config: Path
    metrics: Path
    log: Path
    plots: Path


def header_lines(cfg: DictConfig, paths: RunPaths) -> list[str]:
    """The run's header: what is trained, on what, for how long, and where its files go."""
    experiment = _get(cfg, "trainer.experiment_name", "")
    lines = [f"{experiment} · lambda_grpo {__version__} (λ-GRPO, arXiv 2510.06870) on verl {VERL_VERSION}",
             f"  model     {_get(cfg, 'actor_rollout_ref.model.path')}",
             f"  algo      {_algo(cfg)}",
             f"  loss      {_loss(cfg)}",
             f"  data      train {_files(_get(cfg, 'data.train_files'))} · val {_files(_get(cfg, 'data.val_files'))}",
             f"  batch     {_get(cfg, 'data.train_batch_size')} prompts × {_get(cfg, 'actor_rollout_ref.rollout.n')} "
             f"responses per step; prompts ≤ {_get(cfg, 'data.max_prompt_length')}, responses ≤ "
             f"{_get(cfg, 'data.max_response_length')} tokens",
             f"  devices   {_devices(cfg)}",
             f"  steps     {_schedule(cfg)}",
             f"  run dir   {paths.run_dir}",
             f"  config    {paths.config}",
             f"  metrics   {paths.metrics}",
             f"  log       {paths.log}",
             "            (everything verl, Ray and vLLM print; follow it with tail -f)"]
    return lines


def _algo(cfg: DictConfig) -> str:
    scheme = str(_get(cfg, "lambda_grpo.scheme", "?"))
    if scheme != "lambda":
        return SCHEMES.get(scheme, scheme)
    normalization = _get(cfg, "lambda_grpo.normalization", "softmax")
    weights = "G·softmax(h^λ)" if normalization == "softmax" else "G·h^λ/Σh^λ"
    init = float(_get(cfg, "lambda_grpo.lambda_init", 0.0))
    if _get(cfg, "lambda_grpo.lambda_trainable", True):
        low, high = _get(cfg, "lambda_grpo.lambda_bounds", [None, None])
        learned = f"λ learned from {init:g} (lr {_get(cfg, 'lambda_grpo.lambda_lr')}, bounds [{low:g}, {high:g}])"
    else:
        learned = f"λ fixed at {init:g}"
    return f"λ-GRPO: f_i = {weights}, h = 1 + r·z, r = {float(_get(cfg, 'lambda_grpo.r')):.4g}; {learned}"


def _loss(cfg: DictConfig) -> str:
    actor = "actor_rollout_ref.actor"
    text = f"surrogate {_get(cfg, f'{actor}.policy_loss.loss_mode')} (clip {_get(cfg, f'{actor}.clip_ratio')})"
    if _get(cfg, f"{actor}.use_kl_loss"):
        text += f", KL {_get(cfg, f'{actor}.kl_loss_type')} × {_get(cfg, f'{actor}.kl_loss_coef')}"
    return text + f", actor lr {_get(cfg, f'{actor}.optim.lr')}"


def _files(files: object) -> str:
    if files is None:
        return "none"
    if isinstance(files, str):
        return files
    files = list(files)
    return files[0] if len(files) == 1 else f"{files[0]} (+{len(files) - 1} more)"


def _devices(cfg: DictConfig) -> str:
    nodes, per_node = int(_get(cfg, "trainer.nnodes", 1)), int(_get(cfg, "trainer.n_gpus_per_node", 1))
    device = str(_get(cfg, "trainer.device", "cuda"))
    return f"{_plural(nodes, 'node')} × {_plural(per_node, DEVICES.get(device, device))}"


def _schedule(cfg: DictConfig) -> str:
    total = _get(cfg, "trainer.total_training_steps")
    epochs = _get(cfg, "trainer.total_epochs")
    steps = f"{total}" if total else f"{_plural(int(epochs), 'epoch')} of the training data"
    save_freq = int(_get(cfg, "trainer.save_freq", -1))
    saves = f"checkpoint every {save_freq} steps and at the end" if save_freq > 0 else "no checkpoints (save_freq)"
    test_freq = int(_get(cfg, "trainer.test_freq", -1))
    validation = f"validation every {test_freq} steps" if test_freq > 0 else "no validation"
    if _get(cfg, "trainer.val_before_train", False):
        validation += " and before training"
    return f"{steps}; {saves}; {validation}; resume: {_get(cfg, 'trainer.resume_mode', 'auto')}"


def tagged_message(line: str) -> str | None:
    """The message of a log line that our code tagged with TAG: Ray's worker prefix, colours and the tag removed."""
    if TAG not in line:
        return None
    return ANSI.sub("", RAY_PREFIX.sub("", line)).replace(TAG, "", 1).strip()


@dataclass
class Progress:
    """What the console knows of this start: total steps, the step records seen, their durations."""

    total_steps: int | None = None
    durations: list[float] = field(default_factory=list)
    last_step: int | None = None

    def start_up_line(self, line: str) -> str | None:
        """The console's message for a start-up milestone in a log line (PHASES), or None."""
        if match := TOTAL_STEPS.search(line):
            self.total_steps = int(match["total"])
        for phase in PHASES:
            if match := phase.pattern.search(line):
                return phase.message.format(**match.groupdict())
        return None

    def record_lines(self, step: int, data: Mapping[str, object]) -> list[str]:
        """The console lines for one record of verl's file logger: a step line, a validation line, or both."""
        lines = []
        if any(shown.metric in data for shown in _all_shown()) or STEP_SECONDS[0] in data:
            self.durations.append(sum(_number(data.get(key)) or 0.0 for key in STEP_SECONDS))
            self.last_step = step
            lines.append(self.step_line(step, data))
        validation = validation_scores(data)
        if validation:
            lines.append(f"validation at step {step}: "
                         + " · ".join(f"{source} {score:.3f}" for source, score in validation.items()))
        return lines

    def step_line(self, step: int, data: Mapping[str, object]) -> str:
        """`step 2/3  reward 0.312  len 7.4  …  3.1 s/step  ETA 0:06` (fields missing from `data` left out)."""
        width = len(str(self.total_steps or step))
        parts = [f"step {step:>{width}}" + (f"/{self.total_steps}" if self.total_steps else "")]
        for alternatives in STEP_FIELDS:
            shown = next((shown for shown in alternatives if _number(data.get(shown.metric)) is not None), None)
            if shown is not None:
                parts.append(f"{shown.label} {shown.fmt.format(_number(data[shown.metric]))}")
        if self.durations:
            parts.append(f"{self.durations[-1]:.1f} s/step")
        eta = self.eta_seconds(step)
        if eta is not None:
            parts.append(f"ETA {clock(eta)}")
        return "  ".join(parts)

    def eta_seconds(self, step: int) -> float | None:
        """Steps left × the mean duration of the last ETA_WINDOW steps (a start's first step, which includes
        the workers' warm-up, is left out once there are others); None without a total."""
        if not self.total_steps or not self.durations:
            return None
        recent = self.durations[1:] if len(self.durations) > 1 else self.durations
        recent = recent[-ETA_WINDOW:]
        return max(0, self.total_steps - step) * sum(recent) / len(recent)


def _all_shown() -> list[Shown]:
    return [shown for alternatives in STEP_FIELDS for shown in alternatives]


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def validation_scores(data: Mapping[str, object]) -> dict[str, float]:
    """Validation accuracy per data source (verl's val-core/<source>/acc/mean@<n>) in one record."""
    scores = {}
    for metric, value in data.items():
        if (match := VALIDATION.fullmatch(metric)) and _number(value) is not None:
            scores[match["source"]] = float(value)
    return dict(sorted(scores.items()))


def summary_lines(
    outcome: str,
    elapsed_s: float,
    history: Series,
    checkpoint: Path | None,
    paths: RunPaths,
    plots: Sequence[Path] | str,
) -> list[str]:
    """The end-of-run summary: `outcome` ("finished", "FAILED", ...), the run's metrics first → last over
    every start (`history`, as lambda_grpo.plots reads them), the latest checkpoint and the files."""
    timed = history.get(STEP_SECONDS[0])  # training steps; a validation before training is step 0 without it
    steps = sorted({step for step, _ in timed} if timed else {step for points in history.values() for step, _ in points})
    done = f"{_plural(len(steps), 'step')} logged (steps {steps[0]}–{steps[-1]})" if steps else "no step logged"
    lines = [f"{outcome} after {clock(elapsed_s)}: {done}"]
    for label, metric, fmt in SUMMARY_METRICS:
        series = history.get(metric)
        if series:
            (first_step, first), (last_step, last) = series[0], series[-1]
            change = f"{fmt.format(first)} (step {first_step}) → {fmt.format(last)} (step {last_step})"
            lines.append(f"  {label:<10}{change}")
    lines.append(f"  checkpoint {checkpoint if checkpoint else 'none'}")
    if checkpoint and outcome != "finished":
        lines.append("  resume    run the same command again: it continues from this checkpoint")
    lines.append(f"  metrics   {paths.metrics}")
    if isinstance(plots, str):
        lines.append(f"  plots     {plots}")
    else:
        lines.append(f"  plots     {paths.plots}/ {' '.join(path.name for path in plots)}")
    lines.append(f"  log       {paths.log}")
    return lines
