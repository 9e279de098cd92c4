"""spaCy named-entity recognition with PaDeLLM-NER parallel decoding."""
from .about import __version__
from .pipe import PaDeLLMNER, make_padellm_ner

__all__ = ["PaDeLLMNER", "make_padellm_ner", "__version__"]
