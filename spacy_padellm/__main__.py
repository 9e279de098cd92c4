"""`python -m spacy_padellm ...` (see cli.py)."""
from .cli import main

main()
