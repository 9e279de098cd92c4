"""Every registered function of the package, in one place.

The entry points in setup.cfg point here, so spaCy finds these names without
the package being imported first.
"""
from .corpus import make_jsonl_corpus
from .models.architectures import build_causal_lm, build_llama_cpp
from .memory.settings import make_infllm_memory
from .models.llm_model import make_local_causal_lm
from .scoring import make_padellm_ner_scorer
from .scripted_backend import make_scripted_backend

causal_lm_v1 = build_causal_lm
llama_cpp_v1 = build_llama_cpp
ner_scorer_v1 = make_padellm_ner_scorer
jsonl_corpus_v1 = make_jsonl_corpus
local_causal_lm_v1 = make_local_causal_lm  # spacy-llm's @llm_models
scripted_backend_v1 = make_scripted_backend  # @misc, for tests
infllm_memory_v1 = make_infllm_memory  # @misc: [components.padellm_ner.memory]
