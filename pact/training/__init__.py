"""Training: the ``Method`` interface and SFT (``methods``), the one Trainer subclass every method uses
(``trainer``) and the fine-tuning stage (``finetune``)."""
