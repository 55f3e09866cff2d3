"""Fine-tune orchestration: preflight, launch, reconcile, cancel, adapters."""
