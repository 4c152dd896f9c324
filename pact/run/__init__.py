"""One run: the config schema and validation (``config``), start-up checks of the models a run names (``hub``),
clean command-line errors (``cli``) and the stages chained into a run (``pipeline``)."""
