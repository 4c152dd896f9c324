"""Checks of the machinery, not steps of a study: does a row's reference depend on its batch-mates
(``batch_invariance``), does vLLM answer as HF ``generate`` does (``check_vllm``), does the GPU path train and fit
(``gpu_check``), what the official PACT code's details do on a model (``protocol_check``), and a run seeded with
another store's upstream models for side-by-side comparisons (``seeded``)."""
