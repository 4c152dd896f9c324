"""Entry points: ``python -m experiments.run`` runs one (model, task, poison, method, seed) through the stages."""
