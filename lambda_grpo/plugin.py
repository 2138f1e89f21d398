"""verl plugin entry point (setuptools group `verl.plugins`, see pyproject.toml).

verl imports every `verl.plugins` entry point at the end of `import verl`, in every process that imports
it: the launcher, the TaskRunner and each Ray worker. Importing this module

- registers the "cpu" platform in verl's platform registry; it is selected, and its process hooks
  installed, only where VERL_PLATFORM=cpu (lambda_grpo.cpu_platform);
- registers the `${lambda_grpo.tiny:...}` config resolver of model_size=tiny_cpu (lambda_grpo.tiny_assets).

λ-GRPO registers no policy loss: it runs the configured surrogate of verl's registry with per-response weights
(lambda_grpo.loss), installed as the actor's loss function by the trainer. verl swallows entry-point import
errors (logged at DEBUG), so `python -m lambda_grpo.main` asserts that this module loaded before starting
Ray, and the runtime environment sets VERL_USE_EXTERNAL_MODULES=lambda_grpo.plugin, which makes errors loud.
"""

from lambda_grpo import cpu_platform, tiny_assets  # noqa: F401  (registration on import)
