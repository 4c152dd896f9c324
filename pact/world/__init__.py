"""The embedded toy safety world: a seeded generator, its tokenizer, and its exact (oracle) judge."""
