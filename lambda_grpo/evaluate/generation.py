"""Generate k responses per prompt with vLLM (GPU clusters) or transformers' generate (small models, CPU).

Both backends take chat-templated prompt strings and return, per prompt, k decoded responses (special tokens
skipped). Generation stops where training's rollouts stop (lambda_grpo.end_of_turn: the tokenizer's EOS and the
chat template's end-of-turn token, e.g. `<|im_end|>` for Qwen2.5 base models, whose EOS is `<|endoftext|>`), at
the generation config's EOS ids, or after `max_tokens` new tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from lambda_grpo.end_of_turn import turn_stop_token_ids


@dataclass(frozen=True)
class SamplingSettings:
    """k responses per problem; temperature 0 is greedy decoding (then top_p is ignored and k must be 1)."""

    k: int
    temperature: float
    top_p: float
    max_tokens: int
    seed: int

    def __post_init__(self) -> None:
        if self.k < 1 or self.max_tokens < 1:
            raise ValueError(f"k={self.k} and max_tokens={self.max_tokens} must be >= 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"temperature={self.temperature} must be >= 0 and top_p={self.top_p} in (0, 1]")
        if self.temperature == 0 and self.k > 1:
            raise ValueError(f"k={self.k} greedy responses would be identical; sample with --temperature > 0")

    @property
    def metric(self) -> str:
        """The metric name: pass@1 for one greedy response, avg@k (mean accuracy over k samples) otherwise."""
        return "pass@1" if self.temperature == 0 else f"avg@{self.k}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Generator(Protocol):
    def generate(self, prompts: Sequence[str], settings: SamplingSettings) -> list[list[str]]: ...


def stop_token_ids(tokenizer: Any, model_dir: Path) -> list[int]:
    """Training's stop ids (`turn_stop_token_ids`) plus the generation config's EOS ids.

    vLLM adds the generation config's EOS ids to every request itself (so training's rollouts stop there too);
    transformers' `generate` replaces them with the `eos_token_id` it is given, so they are named here.
    """
    from transformers import GenerationConfig

    try:
        configured = GenerationConfig.from_pretrained(model_dir).eos_token_id
    except OSError:  # no generation_config.json
        configured = None
    return turn_stop_token_ids(
        tokenizer, configured if isinstance(configured, list) else [configured] if configured is not None else []
    )


class HfGenerator:
    """transformers' `generate`, batched with left padding; sampling seeded by `settings.seed`."""

    def __init__(self, model_dir: Path, tokenizer: Any, device: str, dtype: str, batch_size: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.tokenizer = tokenizer
        self.device = device
        self.batch_size = batch_size
        self.stop_ids = stop_token_ids(tokenizer, model_dir)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype).to(device).eval()

    def generate(self, prompts: Sequence[str], settings: SamplingSettings) -> list[list[str]]:
        import torch
        from tqdm import tqdm

        torch.manual_seed(settings.seed)
        self.tokenizer.padding_side = "left"
        sampling = (
            {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p}
            if settings.temperature > 0
            else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        )
        responses: list[list[str]] = []
        for start in tqdm(range(0, len(prompts), self.batch_size), desc="generate (hf)", unit="batch", leave=False):
            batch = list(prompts[start : start + self.batch_size])
            encoded = self.tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            with torch.no_grad():
                output = self.model.generate(
                    **encoded,
                    max_new_tokens=settings.max_tokens,
                    num_return_sequences=settings.k,
                    eos_token_id=self.stop_ids,
                    pad_token_id=self.pad_id,
                    **sampling,
                )
            texts = self.tokenizer.batch_decode(output[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
            responses.extend(texts[i : i + settings.k] for i in range(0, len(texts), settings.k))
        return responses


class VllmGenerator:
    """vLLM's offline `LLM.generate`: all prompts in one call, n = k samples each.

    The sampling seed is the engine's (`engine_args["seed"]`), not a per-request one: a per-request seed would
    give every prompt the same random stream.
    """

    def __init__(self, model_dir: Path, tokenizer: Any, engine_args: dict[str, Any]) -> None:
        from vllm import LLM

        self.stop_ids = stop_token_ids(tokenizer, model_dir)
        self.llm = LLM(model=str(model_dir), **engine_args)

    def generate(self, prompts: Sequence[str], settings: SamplingSettings) -> list[list[str]]:
        from vllm import SamplingParams

        params = SamplingParams(
            n=settings.k,
            temperature=settings.temperature,
            top_p=settings.top_p if settings.temperature > 0 else 1.0,
            max_tokens=settings.max_tokens,
            stop_token_ids=self.stop_ids,
            skip_special_tokens=True,
        )
        outputs = self.llm.generate(list(prompts), params, use_tqdm=True)
        return [[completion.text for completion in output.outputs] for output in outputs]
