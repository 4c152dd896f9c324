"""PACT: preserving safety alignment by constraining safety tokens during fine-tuning.

The package holds the PACT method and the research library every method shares (data, models, training,
generation, judges, metrics, artifact store, toy world).
"""

__version__ = "0.1.0"
