"""What every stage runs on, and nothing else of pact: the content-keyed artifact store, atomic files, the
process group (``torchrun``), run records and the per-example reference cache."""
