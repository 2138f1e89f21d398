"""Benchmark evaluation of checkpoints: `python -m lambda_grpo.evaluate run|table` (see `__main__`).

Modules: `checkpoint` (HF directory, or a verl actor checkpoint merged with verl's merger), `generation` (vLLM and
transformers backends, sampling settings), `runner` (resumable per-benchmark generation and scoring with the
training reward, per-sample JSONL, results.json), `table` (the paper's Table 1 layout, Markdown and CSV).
"""
