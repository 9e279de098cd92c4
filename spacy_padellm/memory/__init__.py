"""A bounded memory for long documents (InfLLM, Xiao et al. 2024).

A doc is streamed into the memory segment by segment. Per attention layer
the memory keeps the first tokens (attention sinks), a window of recent
tokens, and the evicted past as blocks, each summarized by the keys of the
tokens that drew the most attention while they were in the window. A chunk
of queries attends to the sinks, the top-k blocks its queries score
highest, and the window, so attention cost stays bounded however long the
doc is, while distant context stays reachable.

- `settings.py`: the settings and their registered function
  (`spacy_padellm.InfLLMMemory.v1`);
- `store.py`: what one doc's memory holds, per layer;
- `attention.py`: the attention that reads (and, when streaming, writes) it;
- `caches.py`: how the attention finds the memory inside a transformers
  forward call;
- `engine.py`: the torch backend's memory capability (stream text in, encode
  prefixes behind it) and the view of a backend that decodes behind memories.
"""
