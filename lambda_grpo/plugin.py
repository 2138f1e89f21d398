"""verl plugin entry point (setuptools group `verl.plugins`, see pyproject.toml).

verl imports every `verl.plugins` entry point at the end of `import verl`, in every process that imports
it: the launcher, the TaskRunner and each Ray worker. Importing this module registers the `lambda_grpo`
policy loss in verl's registry. verl swallows entry-point import errors (logged at DEBUG), so our entry
point also asserts the registration (`python -m lambda_grpo.main` checks it before starting Ray) and the
runtime environment sets VERL_USE_EXTERNAL_MODULES=lambda_grpo.plugin, which makes errors loud.
"""

from lambda_grpo import loss  # noqa: F401  (registers "lambda_grpo" in verl's POLICY_LOSS_REGISTRY)
