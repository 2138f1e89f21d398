"""λ-GRPO (arXiv 2510.06870) on verl 0.9.1.

Importing this package is cheap and imports neither verl nor ray: the pure math lives in
`lambda_grpo.weights` and `lambda_grpo.learnable_lambda`; everything that touches verl is in the
glue modules (`loss`, `actor_loss`, `trainer`, `plugin`, ...), imported only where needed.
"""

__version__ = "0.1.0"

VERL_VERSION = "0.9.1"
