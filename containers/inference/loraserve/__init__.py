"""LoRA adapter-serving HTTP server (the inference container).

Serves one base causal LM plus any number of PEFT LoRA adapters, chosen per request, over the
SageMaker inference contract (``GET /ping``, ``POST /invocations`` on port 8080).

This package ships alone inside the inference container: it must never import the control plane
(``api``, ``cli``) nor the training engine (``scu``). Torch-free modules: ``loraserve.config``,
``loraserve.schemas``, ``loraserve.errors``, ``loraserve.logs``, ``loraserve.store``.
"""

__version__ = "0.1.0"
