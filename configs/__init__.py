"""Hydra configs of lambda_grpo, shipped in the wheel as `lambda_grpo.configs` (see pyproject.toml)."""
