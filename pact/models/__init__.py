"""Models: loading and saving by hub id or local path and the toy architecture (``loading``), LoRA adapters
(``adapters``), and models imported from a GGUF file (``model_import``)."""
