"""Rows and their sources: jsonl files, prompt formats, SFT encoding and poisoning (``rows``), answer positions
(``labels``), the real sources' files and manifest (``sources``) and a run's data behind one interface (``rundata``)."""
