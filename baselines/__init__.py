"""Baseline methods, one module each; importing this package registers them with ``pact.methods``.

Plain SFT (full or LoRA) is ``pact.methods.Method`` itself: the method that changes nothing.
"""

from baselines import constrained_sft, freeze, lisa, safety_mix, vaccine  # noqa: F401,E402
