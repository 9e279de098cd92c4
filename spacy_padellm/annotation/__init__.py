"""Corpus-scale annotation: `python -m spacy_padellm annotate` on one
machine, in several processes, or on Ray Data (see run.py)."""
