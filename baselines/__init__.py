"""Baseline methods, one module each. Each is named by the ``_target_`` of its ``conf/method/*.yaml``; nothing
imports this package to register them. Plain SFT (full or LoRA) is ``pact.training.methods.Method`` itself."""
