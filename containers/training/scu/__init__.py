"""SCU LoRA training engine (Shannon Control Unit).

This package ships alone inside the training container: it must never import the control plane
(`api`, `cli`). Torch-free modules that the control plane may import: `scu.metrics_format`,
`scu.paths`, `scu.controller`, `scu.controllers`, `scu.defaults`, `scu.config`, `scu.hyperparams`.
"""

__version__ = "0.1.0"
