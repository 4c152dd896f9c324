"""Evaluation: generation engines (``generation``), keyword judges (``judges``), model judges (``guard``), task
parsing and metrics (``metrics``) and utility beyond the task (``utility``)."""
