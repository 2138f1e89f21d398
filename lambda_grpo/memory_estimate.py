"""Per-GPU memory and per-run checkpoint disk of a training config, with the arithmetic shown.

The header of every Qwen size file (configs/model_size/qwen2_5_*.yaml) is this module's output for that size;
tests/test_memory_estimate.py checks that they agree, so a changed token budget or GPU count cannot leave a stale
estimate behind. For other overrides (GPU count, budgets, offload) print a new one:

    python -m lambda_grpo.memory_estimate model_size=qwen2_5_7b trainer.n_gpus_per_node=4 [--gpu-gb 80]

An estimate, not a measurement (GB = 1e9 bytes). With P parameters, vocabulary V, hidden size h, MLP size I,
L layers, N = GPUs in the run, TP = vLLM's tensor-parallel size and T a per-GPU token budget:

    actor state    (8 B unless param_offload + 8 B unless optimizer_offload)·P/N
                   fp32 weights and gradients; Adam's m and v in fp32 (verl's FSDP keeps model_dtype=fp32)
    reference      4 B·P/N (fp32 weights; counted even when offloaded between its passes); 0 without KL loss
    rollout        gpu_memory_utilization × GPU memory, vLLM's own: bf16 weights 2 B·P/TP, the rest KV cache
                   at 2 (K, V)·L·kv_heads·head_dim·2 B / TP per token (less vLLM's activations and CUDA graphs)
    actor update   T = ppo_max_token_len_per_gpu: bf16 logits 2 B·V·T (flash-attn's cross entropy writes their
                   gradient in place), checkpointed layer inputs 2 B·h·L·T, one recomputed layer ≈ 2 B·(4h+4I)·T,
                   and FSDP's all-gathered LM head and layer 2 B·(V·h + P_layer)
    log-prob pass  T = rollout.log_prob_max_token_len_per_gpu, no gradients: logits 2 B·V·T, one layer
                   2 B·(4h+4I)·T, the all-gathered weights, and the entropy verl computes in this pass: chunked
                   (actor.entropy_from_logits_with_chunking) 3·4 B·V·chunk fp32 temporaries (chunk =
                   actor.entropy_from_logits_chunk_size, 2,048), else 2·2 B·V·T (softmax and product, bf16)
    peak           resident (actor state + reference) + the largest of rollout, update, log-prob
                   (vLLM frees its memory while the actor trains: free_cache_engine, verl's GPU default)
    checkpoint     12 B·P: fp32 weights and Adam's m and v (λ lives in the optimizer state), summed over ranks;
                   trainer.max_actor_ckpt_to_keep of them stay on disk
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

GB = 1e9
ENTROPY_CHUNK_TEMPORARIES = 3
"""fp32 tensors of chunk × V alive at once in verl's entropy_from_logits_with_chunking: the chunk, softmax, product."""


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """The dimensions that decide memory, as in the model's HF config.json."""

    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    tied_embeddings: bool

    @classmethod
    def from_hf_config(cls, config: dict[str, Any]) -> ModelShape:
        return cls(
            vocab=config["vocab_size"],
            hidden=config["hidden_size"],
            intermediate=config["intermediate_size"],
            layers=config["num_hidden_layers"],
            heads=config["num_attention_heads"],
            kv_heads=config.get("num_key_value_heads", config["num_attention_heads"]),
            head_dim=config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"],
            tied_embeddings=config.get("tie_word_embeddings", False),
        )

    @property
    def layer_params(self) -> int:
        """q, k, v (with biases, as Qwen2), o, gate/up/down, two RMSNorms."""
        h, kv = self.hidden, self.kv_heads * self.head_dim
        q = h * self.heads * self.head_dim + self.heads * self.head_dim
        return q + 2 * (h * kv + kv) + self.heads * self.head_dim * h + 3 * h * self.intermediate + 2 * h

    @property
    def params(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return embeddings + self.layers * self.layer_params + self.hidden

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * 2


KNOWN_SHAPES = {
    "Qwen/Qwen2.5-1.5B": ModelShape(151936, 1536, 8960, 28, 12, 2, 128, True),
    "Qwen/Qwen2.5-3B": ModelShape(151936, 2048, 11008, 36, 16, 2, 128, True),
    "Qwen/Qwen2.5-7B": ModelShape(152064, 3584, 18944, 28, 28, 4, 128, False),
}
"""config.json of each Hugging Face model the size files name (read offline; any local model dir is read itself)."""


def model_shape(model_path: str) -> ModelShape:
    """The shape of a model the size files name, or of a local HF model directory."""
    if model_path in KNOWN_SHAPES:
        return KNOWN_SHAPES[model_path]
    config = Path(model_path).expanduser() / "config.json"
    if config.is_file():
        return ModelShape.from_hf_config(json.loads(config.read_text()))
    raise ValueError(
        f"actor_rollout_ref.model.path: {model_path} is neither a local HF model directory nor one of "
        f"{sorted(KNOWN_SHAPES)}; pass a local directory (its config.json gives the shape)"
    )


@dataclasses.dataclass(frozen=True)
class Estimate:
    """The terms of the estimate, in GB per GPU (checkpoints: GB on disk)."""

    shape: ModelShape
    gpus: int
    gpu_gb: float
    state_bytes: int
    state: float
    reference: float
    reference_offloaded: bool
    utilization: float
    tp: int
    rollout_weights: float
    kv_bytes_per_token: int
    update_tokens: int
    update_logits: float
    update_checkpoints: float
    update_layer: float
    gathered: float
    log_prob_tokens: int
    log_prob_logits: float
    entropy: float
    entropy_chunk: int | None
    log_prob_layer: float
    checkpoint: float
    kept: int | None

    @property
    def rollout(self) -> float:
        return self.utilization * self.gpu_gb

    @property
    def update(self) -> float:
        return self.update_logits + self.update_checkpoints + self.update_layer + self.gathered

    @property
    def log_prob(self) -> float:
        return self.log_prob_logits + self.entropy + self.log_prob_layer + self.gathered

    @property
    def peak(self) -> float:
        return self.state + self.reference + max(self.rollout, self.update, self.log_prob)


def estimate(cfg: Any, gpu_gb: float = 80.0) -> Estimate:
    """The estimate of a composed training config on GPUs of `gpu_gb` GB (formulas: module docstring)."""
    shape = model_shape(str(cfg.actor_rollout_ref.model.path))
    actor, rollout, ref = cfg.actor_rollout_ref.actor, cfg.actor_rollout_ref.rollout, cfg.actor_rollout_ref.ref
    p, v, h = shape.params, shape.vocab, shape.hidden
    gpus, tp = int(cfg.trainer.n_gpus_per_node) * int(cfg.trainer.nnodes), int(rollout.tensor_model_parallel_size)
    state_bytes = (0 if actor.fsdp_config.param_offload else 8) + (0 if actor.fsdp_config.optimizer_offload else 8)
    per_layer = 2 * (4 * h + 4 * shape.intermediate)
    t_update, t_lp = int(actor.ppo_max_token_len_per_gpu), int(rollout.log_prob_max_token_len_per_gpu)
    chunk = int(actor.get("entropy_from_logits_chunk_size", 2048))
    chunked = bool(actor.get("entropy_from_logits_with_chunking", False))
    kept = cfg.trainer.get("max_actor_ckpt_to_keep")
    return Estimate(
        shape=shape, gpus=gpus, gpu_gb=gpu_gb, state_bytes=state_bytes, state=state_bytes * p / gpus / GB,
        reference=4 * p / gpus / GB if actor.use_kl_loss else 0.0,
        reference_offloaded=bool(ref.fsdp_config.param_offload),
        utilization=float(rollout.gpu_memory_utilization), tp=tp, rollout_weights=2 * p / tp / GB,
        kv_bytes_per_token=shape.kv_bytes_per_token // tp,
        update_tokens=t_update, update_logits=2 * v * t_update / GB,
        update_checkpoints=2 * h * shape.layers * t_update / GB, update_layer=per_layer * t_update / GB,
        gathered=2 * (v * h + shape.layer_params) / GB,
        log_prob_tokens=t_lp, log_prob_logits=2 * v * t_lp / GB,
        entropy=ENTROPY_CHUNK_TEMPORARIES * 4 * v * chunk / GB if chunked else 2 * 2 * v * t_lp / GB,
        entropy_chunk=chunk if chunked else None, log_prob_layer=per_layer * t_lp / GB,
        checkpoint=12 * p / GB, kept=int(kept) if kept else None,
    )


def estimate_lines(cfg: Any, gpu_gb: float = 80.0) -> list[str]:
    """The estimate of a composed training config, one line per term (the size files' header lines)."""
    e = estimate(cfg, gpu_gb)
    s = e.shape
    kv_cache = e.rollout - e.rollout_weights
    entropy = (f"chunked entropy 3·4 B·V·{e.entropy_chunk:,} {e.entropy:.1f}" if e.entropy_chunk
               else f"entropy 2·2 B·V·T {e.entropy:.1f}")
    disk = (_line("disk per run", f"{e.kept} kept (trainer.max_actor_ckpt_to_keep)", e.kept * e.checkpoint) if e.kept
            else _line("disk per run", "all kept (trainer.max_actor_ckpt_to_keep: null): checkpoint × saves"))
    return [
        f"P = {s.params / 1e9:.2f}e9 params, V = {s.vocab:,}, h = {s.hidden:,}, I = {s.intermediate:,}, "
        f"L = {s.layers}; N = {e.gpus} GPUs of {gpu_gb:g} GB (GB = 1e9 bytes)",
        _line("actor state", f"{e.state_bytes} B·P/N: fp32 weights, grads, Adam m and v", e.state),
        _line("reference", "4 B·P/N: fp32 weights" + (", offloaded between passes; counted"
                                                       if e.reference_offloaded else ""), e.reference),
        _line("rollout", f"gpu_memory_utilization {e.utilization:.2f} × {gpu_gb:g} GB", e.rollout),
        _line("", f"  weights 2 B·P/TP{e.tp} {e.rollout_weights:.1f} + KV cache {kv_cache:.1f} "
              f"({kv_cache * GB / e.kv_bytes_per_token / 1e6:.2f}M tokens of {e.kv_bytes_per_token:,} B)"),
        _line("actor update", f"T = {e.update_tokens:,}: logits 2 B·V·T {e.update_logits:.1f} "
              f"+ checkpoints 2 B·h·L·T {e.update_checkpoints:.1f}", e.update),
        _line("", f"  + one layer 2 B·(4h+4I)·T {e.update_layer:.1f} + gathered 2 B·(V·h + layer) {e.gathered:.1f}"),
        _line("log-prob", f"T = {e.log_prob_tokens:,}: logits {e.log_prob_logits:.1f} + {entropy}", e.log_prob),
        _line("", f"  + one layer {e.log_prob_layer:.1f} + gathered {e.gathered:.1f}"),
        _line("peak", f"resident {e.state + e.reference:.1f} + max(rollout {e.rollout:.1f}, update {e.update:.1f}, "
              f"log-prob {e.log_prob:.1f})", e.peak) + f" of {gpu_gb:g}",
        _line("checkpoint", "12 B·P: fp32 weights, Adam m and v (λ inside)", e.checkpoint),
        disk,
    ]


def _line(label: str, text: str, value: float | None = None) -> str:
    """`label  text ... = value GB`, values right-aligned in one column."""
    body = f"{label:<14}{text}"
    return f"{body:<84}= {value:5.1f} GB" if value is not None else body


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lambda_grpo.memory_estimate",
        description="Print the per-GPU memory estimate and the checkpoint disk of a training config.",
    )
    parser.add_argument("--gpu-gb", type=float, default=80.0, help="memory of one GPU in GB (default 80)")
    parser.add_argument("overrides", nargs="*", help="the training overrides, e.g. model_size=qwen2_5_7b")
    args = parser.parse_args(argv)
    from lambda_grpo.config import ConfigError, compose

    try:
        lines = estimate_lines(compose(args.overrides), args.gpu_gb)
    except (ConfigError, ValueError) as error:
        print(f"lambda_grpo.memory_estimate: {error}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
