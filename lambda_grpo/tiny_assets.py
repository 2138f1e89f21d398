"""Tiny, offline, deterministic assets for running verl's real trainer on CPU.

Three assets, generated on first use into a cache directory and reused afterwards:

- a byte-level BPE tokenizer trained locally with `tokenizers`, saved as an HF tokenizer
  directory. Its special tokens are those of Qwen2.5 *base* models: EOS and pad `<|endoftext|>`,
  a ChatML chat template whose turns end with `<|im_end|>`. EOS is not the end of a turn, so
  every run of the tiny model checks that rollouts stop where the chat turn ends
  (lambda_grpo.end_of_turn), as the real base models need;
- a randomly initialised Qwen2-architecture causal LM (hidden 64, 2 layers, 1 head of dim 64 —
  vLLM's CPU attention rejects head_dim 16) saved as a self-contained HF model directory
  (weights, config, generation config and the tokenizer files, as verl and vLLM expect);
- a toy task, "What is a + b?" with a, b in 0..9, in verl's parquet schema, and its reward
  function `compute_score` (verl's custom-reward signature).

Why the random model is not plain random. A randomly initialised LM over V tokens has almost
uniform next-token probabilities, so it samples EOS with probability ~1/V per step: every
response runs to the length limit and a length-dependent loss has nothing to work with. The
model here is random except for one "bias channel": hidden dimension 0 of every token embedding
is set to a constant, so after the final RMSNorm h[0] is almost the same at every position, and
column 0 of the (untied) LM head holds `log p(token) / h[0]`. The logits are then
`log p(token) + ε` with ε ~ 0.03: the untrained model samples from a chosen unigram prior —
the end of turn `<|im_end|>` with probability `p_turn_end` per step (response lengths that stop
there are geometric, so they vary between 1 and the limit), never EOS `<|endoftext|>` (a sampler
that stops only at EOS runs every response to the limit), a digit with probability `p_digit`
(so the arithmetic reward below is non-zero often and differs within a group), any other token
uniformly with the rest. Everything else (attention, MLP, the other LM-head columns) is ordinary
random init, and training moves it.

Cache layout (`cache_dir` = `$LAMBDA_GRPO_CACHE`, default `~/.cache/lambda_grpo/tiny`)::

    <cache_dir>/tokenizer-<key>/   tokenizer.json, tokenizer_config.json, chat template
    <cache_dir>/model-<key>/       config.json, model.safetensors, generation_config.json, tokenizer
    <cache_dir>/toy_add-<key>/     train.parquet, val.parquet

`<key>` is a hash of the spec (`TinySpec`) and of `ASSET_FORMAT`, so a changed spec never reuses
a stale asset. Each directory is built under a temporary name and renamed into place, so a crash
never leaves a half-written asset, and two processes racing to build the same one both end with
the same complete directory.

Usage::

    from lambda_grpo.tiny_assets import ensure_tiny_assets
    assets = ensure_tiny_assets()          # TinyAssets(model_dir=..., train_file=..., ...)

    python -m lambda_grpo.tiny_assets --help

Configs name the paths through the OmegaConf resolver this module registers on import
(`${lambda_grpo.tiny:model_dir}`, `train_file`, `val_file`, `tokenizer_dir`; see `register_resolver`).

The toy reward is used from verl's config as::

    reward.custom_reward_function.path=pkg://lambda_grpo.tiny_assets
    reward.custom_reward_function.name=compute_score
    +reward.custom_reward_function.reward_kwargs.preference=correct   # or short / long
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import random
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ASSET_FORMAT = 2
"""Bump when the generation code changes in a way the spec does not capture (invalidates caches)."""

CACHE_ENV = "LAMBDA_GRPO_CACHE"
"""Environment variable naming the cache directory (default `~/.cache/lambda_grpo/tiny`)."""

DATA_SOURCE = "lambda_grpo/toy_add"
"""`data_source` of the toy task's rows (verl's reward dispatch key)."""

EOS_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (EOS_TOKEN, IM_START, IM_END)
"""Special tokens, in id order right after nothing: ids 0, 1, 2 (the BPE trainer puts them first)."""

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""ChatML, as Qwen2.5 uses it (without Qwen's default system prompt)."""

PREFERENCES = ("correct", "short", "long")
"""Reward variants of the toy task (see `compute_score`)."""

LENGTH_CAP_CHARS = 64
"""Response length (characters) at which the `short`/`long` rewards saturate."""


@dataclasses.dataclass(frozen=True)
class TinySpec:
    """Everything that determines the generated assets (hashed into the cache key).

    Defaults: vocab ≤ 384 (256 byte tokens + 3 specials + the merges the small corpus yields),
    hidden 64, MLP 128, 2 layers, 1 attention head of dim 64; unigram prior p_turn_end = 1/8 per
    step on `<|im_end|>` (mean response ≈ 8 tokens before the limit), p_digit = 1/2 spread over
    the 10 digits; 64 train and 16 validation prompts.
    """

    seed: int = 0
    vocab_size: int = 384
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 1
    head_dim: int = 64
    max_position_embeddings: int = 512
    p_turn_end: float = 0.125
    p_digit: float = 0.5
    n_train: int = 64
    n_val: int = 16

    def __post_init__(self) -> None:
        if self.hidden_size != self.num_attention_heads * self.head_dim:
            raise ValueError(
                f"TinySpec: hidden_size ({self.hidden_size}) must equal num_attention_heads * head_dim "
                f"({self.num_attention_heads} * {self.head_dim})"
            )
        if self.head_dim < 32:
            raise ValueError(f"TinySpec: head_dim={self.head_dim}; vLLM's CPU attention rejects head_dim < 32")
        if not (0 < self.p_turn_end < 1 and 0 <= self.p_digit < 1 and self.p_turn_end + self.p_digit < 1):
            raise ValueError(
                f"TinySpec: need 0 < p_turn_end, 0 <= p_digit and p_turn_end + p_digit < 1; got "
                f"p_turn_end={self.p_turn_end}, p_digit={self.p_digit}"
            )
        if self.vocab_size < 256 + len(SPECIAL_TOKENS):
            raise ValueError(f"TinySpec: vocab_size={self.vocab_size} < 259 (256 byte tokens + 3 specials)")

    def key(self, part: str) -> str:
        """Cache key of one asset: 12 hex digits of sha256(format, part, the fields it depends on)."""
        fields = dataclasses.asdict(self)
        if part == "tokenizer":
            fields = {"seed": self.seed, "vocab_size": self.vocab_size}
        elif part == "toy_add":
            fields = {"seed": self.seed, "n_train": self.n_train, "n_val": self.n_val}
        payload = json.dumps({"format": ASSET_FORMAT, "part": part, **fields}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


@dataclasses.dataclass(frozen=True)
class TinyAssets:
    """Paths of the generated assets (all absolute)."""

    tokenizer_dir: Path
    model_dir: Path
    train_file: Path
    val_file: Path

    def as_dict(self) -> dict[str, str]:
        return {name: str(value) for name, value in dataclasses.asdict(self).items()}


def default_cache_dir() -> Path:
    """`$LAMBDA_GRPO_CACHE` if set, else `~/.cache/lambda_grpo/tiny`."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lambda_grpo" / "tiny"


@contextlib.contextmanager
def _atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory next to `final`; rename it to `final` on success.

    On an exception the temporary directory is removed. If another process created `final`
    meanwhile, ours is discarded (both were built from the same spec, so they are identical).
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it 0700; the cache is meant to be readable like any download
        yield tmp
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _corpus() -> list[str]:
    """The tokenizer's training text: the toy task's prompts, answers and chat scaffolding."""
    lines = [
        f"What is {a} + {b}? Answer with the number only.\n{a + b}" for a in range(10) for b in range(10)
    ]
    lines += [f"{IM_START}user\n{line}{IM_END}\n{IM_START}assistant\n" for line in lines[:20]]
    lines += [
        "The quick brown fox jumps over the lazy dog.",
        "A tiny model for testing the training pipeline on a CPU.",
        "Think step by step, then give the final answer.",
        "0123456789 10 11 12 13 14 15 16 17 18 19 20",
    ]
    return lines


def build_tokenizer(path: str | os.PathLike, spec: TinySpec = TinySpec()) -> Path:
    """Train a byte-level BPE tokenizer on `_corpus()` and save it as an HF tokenizer dir at `path`.

    Vocab: 3 specials (ids 0-2: `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`), the 256
    byte-level symbols, then merges up to `spec.vocab_size` (fewer if the corpus runs out of
    pairs). As in Qwen2.5 base models, EOS and pad are `<|endoftext|>` and the ChatML template
    ends each turn with `<|im_end|>`.
    Training is deterministic for a fixed corpus, so the saved files are byte-identical.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        additional_special_tokens=[IM_START, IM_END],
        clean_up_tokenization_spaces=False,
        model_max_length=spec.max_position_embeddings,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    out = Path(path)
    tokenizer.save_pretrained(out)
    return out


def _unigram_log_prior(tokenizer: Any, spec: TinySpec) -> "torch.Tensor":  # noqa: F821
    """log p(token) of the untrained model: p_turn_end on `<|im_end|>`, p_digit over '0'..'9', the rest uniform.

    EOS `<|endoftext|>` and `<|im_start|>` get probability ~0 (log p = -30), so the model never
    emits them: its responses end only where the chat turn ends (or at the length limit).
    """
    import torch

    vocab = len(tokenizer)
    turn_end_id = tokenizer.convert_tokens_to_ids(IM_END)
    digit_ids = [tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)]
    never = [tokenizer.convert_tokens_to_ids(EOS_TOKEN), tokenizer.convert_tokens_to_ids(IM_START)]
    n_other = vocab - 1 - len(digit_ids) - len(never)
    prior = torch.full((vocab,), (1.0 - spec.p_turn_end - spec.p_digit) / n_other, dtype=torch.float64)
    prior[turn_end_id] = spec.p_turn_end
    prior[digit_ids] = spec.p_digit / len(digit_ids)
    log_prior = prior.log()
    log_prior[never] = -30.0
    return log_prior.float()


def build_model(
    path: str | os.PathLike, tokenizer_dir: str | os.PathLike, spec: TinySpec = TinySpec()
) -> Path:
    """Save a random Qwen2ForCausalLM (with the unigram-prior bias channel) plus tokenizer at `path`.

    Sizes from `spec`; vocab = the tokenizer's length; float32 safetensors; untied embeddings
    (the bias channel needs the LM head to differ from the embedding). `config.json` and
    `generation_config.json` name EOS `<|endoftext|>`, as Qwen2.5 base models do (not the end of
    turn). Deterministic: seeded init, so the weights are bit-identical.
    """
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    eos_id = pad_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_attention_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        torch_dtype="float32",
    )
    torch.manual_seed(spec.seed)
    model = Qwen2ForCausalLM(config).eval()
    _install_unigram_prior(model, _unigram_log_prior(tokenizer, spec))

    out = Path(path)
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(eos_token_id=eos_id, pad_token_id=pad_id, do_sample=True).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _install_unigram_prior(model: Any, log_prior: "torch.Tensor") -> None:  # noqa: F821
    """Make the untrained model's logits ≈ `log_prior` at every position (see module docstring).

    Embedding column 0 := 1 (≫ the 0.02-scale random entries), so after the final RMSNorm
    h[0] ≈ sqrt(hidden) at every position; measured on a few random sequences as `h0`. LM-head
    column 0 := log_prior / h0, so the logits are log_prior plus the small random remainder.
    """
    import torch

    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 1.0
        model.lm_head.weight[:, 0] = 0.0
        generator = torch.Generator().manual_seed(0)
        probe = torch.randint(0, model.config.vocab_size, (4, 16), generator=generator)
        hidden = model.model(input_ids=probe).last_hidden_state
        h0 = hidden[..., 0].mean()
        model.lm_head.weight[:, 0] = log_prior / h0


def toy_add_rows(spec: TinySpec, split: str, count: int) -> list[dict[str, Any]]:
    """`count` rows of the toy task in verl's parquet schema, for `split` ("train" or "val").

    Row: data_source = "lambda_grpo/toy_add", prompt = [{"role": "user", "content":
    "What is a + b? Answer with the number only."}], ability = "math",
    reward_model = {"style": "rule", "ground_truth": str(a + b)},
    extra_info = {"split", "index", "question", "answer"}. a, b drawn from a seeded RNG.
    """
    rng = random.Random(f"{spec.seed}-{split}")
    rows = []
    for index in range(count):
        a, b = rng.randrange(10), rng.randrange(10)
        question = f"What is {a} + {b}? Answer with the number only."
        rows.append(
            {
                "data_source": DATA_SOURCE,
                "prompt": [{"role": "user", "content": question}],
                "ability": "math",
                "reward_model": {"style": "rule", "ground_truth": str(a + b)},
                "extra_info": {"split": split, "index": index, "question": question, "answer": str(a + b)},
            }
        )
    return rows


def build_toy_task(path: str | os.PathLike, spec: TinySpec = TinySpec()) -> tuple[Path, Path]:
    """Write `train.parquet` (spec.n_train rows) and `val.parquet` (spec.n_val rows) under `path`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for split, count in (("train", spec.n_train), ("val", spec.n_val)):
        file = out / f"{split}.parquet"
        pq.write_table(pa.Table.from_pylist(toy_add_rows(spec, split, count)), file)
        files.append(file)
    return files[0], files[1]


def ensure_tiny_assets(cache_dir: str | os.PathLike | None = None, spec: TinySpec = TinySpec()) -> TinyAssets:
    """Return the paths of the tiny assets, generating any that is missing from `cache_dir`.

    `cache_dir` defaults to `default_cache_dir()`. Cheap when everything is cached (three stat
    calls). Prints one progress line (stderr) per asset it generates.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    root = root.absolute()
    tokenizer_dir = root / f"tokenizer-{spec.key('tokenizer')}"
    model_dir = root / f"model-{spec.key('model')}"
    task_dir = root / f"toy_add-{spec.key('toy_add')}"

    if not tokenizer_dir.is_dir():
        print(f"[lambda_grpo.tiny_assets] training the tiny tokenizer -> {tokenizer_dir}", file=sys.stderr, flush=True)
        with _atomic_dir(tokenizer_dir) as tmp:
            build_tokenizer(tmp, spec)
    if not model_dir.is_dir():
        print(f"[lambda_grpo.tiny_assets] building the tiny Qwen2 model -> {model_dir}", file=sys.stderr, flush=True)
        with _atomic_dir(model_dir) as tmp:
            build_model(tmp, tokenizer_dir, spec)
    if not task_dir.is_dir():
        print(f"[lambda_grpo.tiny_assets] writing the toy task -> {task_dir}", file=sys.stderr, flush=True)
        with _atomic_dir(task_dir) as tmp:
            build_toy_task(tmp, spec)
    return TinyAssets(
        tokenizer_dir=tokenizer_dir,
        model_dir=model_dir,
        train_file=task_dir / "train.parquet",
        val_file=task_dir / "val.parquet",
    )


RESOLVER = "lambda_grpo.tiny"
"""OmegaConf resolver: `${lambda_grpo.tiny:model_dir}` → the path of that asset (generated if missing)."""


def _resolve_tiny_asset(field: str) -> str:
    paths = ensure_tiny_assets().as_dict()
    if field not in paths:
        raise ValueError(f"${{{RESOLVER}:{field}}}: unknown tiny asset {field!r}; expected one of {sorted(paths)}")
    return paths[field]


def register_resolver() -> None:
    """Register the `lambda_grpo.tiny` OmegaConf resolver (idempotent; done when this module is imported).

    configs/model_size/tiny_cpu.yaml names its paths through it, so the assets are generated on
    first use, in whichever process resolves the config first (the launcher, in verl's
    validate_config), and found in the cache by every later resolution (the TaskRunner's
    `OmegaConf.resolve`). Every process that resolves the config must import this module: our
    verl plugin does, at `import verl`.
    """
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, _resolve_tiny_asset)


_FIRST_INTEGER = re.compile(r"-?\d+")


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: str,
    extra_info: dict | None = None,
    preference: str = "correct",
    **kwargs: Any,
) -> dict[str, float]:
    """Toy-task reward, verl custom-reward signature; returns {"score", "acc", "response_chars"}.

    With n = len(solution_str) (characters; the end-of-turn token is already stripped by verl's decode),
    C = LENGTH_CAP_CHARS = 64, pred = the first integer in the response (None if none),
    t = int(ground_truth):

    - preference="correct": score = 1 if pred == t; 0.5 · max(0, 1 − |pred − t| / 10) if pred
      is another integer (partial credit for being close, so an untrained model's rewards
      differ within a group); 0 if there is no integer.
    - preference="short": score = 1 − min(n, C) / C   (strictly prefers shorter responses)
    - preference="long":  score = min(n, C) / C        (strictly prefers longer responses)

    `acc` is 1.0 iff pred == t, whatever the preference. `preference` is chosen in the config
    with `+reward.custom_reward_function.reward_kwargs.preference=<name>`.
    """
    if preference not in PREFERENCES:
        raise ValueError(f"compute_score: preference={preference!r}; expected one of {PREFERENCES}")
    try:
        target = int(ground_truth)
    except (TypeError, ValueError):
        raise ValueError(f"compute_score: ground_truth={ground_truth!r} is not an integer") from None
    match = _FIRST_INTEGER.search(solution_str)
    pred = int(match.group()) if match else None
    correct = pred == target
    n_chars = min(len(solution_str), LENGTH_CAP_CHARS)
    if preference == "short":
        score = 1.0 - n_chars / LENGTH_CAP_CHARS
    elif preference == "long":
        score = n_chars / LENGTH_CAP_CHARS
    elif correct:
        score = 1.0
    elif pred is None:
        score = 0.0
    else:
        score = 0.5 * max(0.0, 1.0 - abs(pred - target) / 10.0)
    return {"score": score, "acc": float(correct), "response_chars": float(len(solution_str))}


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lambda_grpo.tiny_assets",
        description="Generate (or find in the cache) the tiny tokenizer, model and toy task; print their paths as JSON.",
    )
    parser.add_argument(
        "--cache-dir",
        default=None,
        help=f"cache directory (default: ${CACHE_ENV}, else ~/.cache/lambda_grpo/tiny)",
    )
    parser.add_argument(
        "--field",
        choices=[f.name for f in dataclasses.fields(TinyAssets)],
        default=None,
        help="print only this path instead of the JSON object (default: print all)",
    )
    args = parser.parse_args(argv)
    assets = ensure_tiny_assets(args.cache_dir)
    print(assets.as_dict()[args.field] if args.field else json.dumps(assets.as_dict(), indent=2))
    return 0


register_resolver()

if __name__ == "__main__":
    raise SystemExit(_main())
