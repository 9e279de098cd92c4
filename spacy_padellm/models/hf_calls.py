"""Our calls into transformers and peft: one at a time, and quiet.

`from_pretrained` is not thread-safe: while it builds a model it changes
process-wide torch state (`torch.set_default_dtype`, the `torch.nn.init`
functions it turns into no-ops, the meta-device helpers), so two loads at
once break each other ("Cannot copy out of meta tensor"), and a LoRA adapter
created in another thread meanwhile gets uninitialized weights. Every load,
adapter creation, merge and save of this package therefore holds `LOAD_LOCK`,
which all pipelines of the process share.

The same calls print what a spaCy user cannot act on: progress bars for
de-quantizing a GGUF file and for "Loading weights", transformers' log lines
and FutureWarnings about transformers' and peft's internals. They are
silenced inside `hf_call()` only, and every switch is put back afterwards,
so a user's own transformers calls behave as before. The switches are
process-wide too, which is one more reason to hold the lock while they are
flipped: two threads restoring them out of order would leave them off.
"""
import importlib
import logging
import threading
import warnings
from contextlib import contextmanager
from typing import Any, Iterator, List, Tuple

# Re-entrant: a load holds it and calls helpers that take it again.
LOAD_LOCK = threading.RLock()

# Modules that create tqdm bars of their own instead of transformers'
# switchable one (the GGUF de-quantization bar).
_OWN_TQDM_MODULES = ("transformers.modeling_gguf_pytorch_utils",)


@contextmanager
def hf_call() -> Iterator[None]:
    """Hold the load lock and silence transformers/peft while inside."""
    with LOAD_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        with _quiet_transformers():
            yield


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging as tf_logging

    tf_logging.get_verbosity()  # configures the library logger before we save its level
    library_logger = logging.getLogger("transformers")
    level = library_logger.level
    library_logger.setLevel(logging.ERROR)
    restore_bars = _hide_progress_bars(tf_logging)
    try:
        yield
    finally:
        restore_bars()
        library_logger.setLevel(level)


def _hide_progress_bars(tf_logging: Any) -> Any:
    """Switch transformers' bars off; returns what switches them back.

    `set_tqdm_hook` (newer transformers) affects transformers' bars only;
    `disable_progress_bar` (older ones) also switches off huggingface_hub's
    download bars, which a real download should keep, so it is the fallback.
    """
    patched: List[Tuple[Any, Any]] = []
    for name in _OWN_TQDM_MODULES:
        try:
            module = importlib.import_module(name)
        except Exception:  # an optional dependency (gguf) is missing: no bar either
            continue
        if hasattr(module, "tqdm"):
            patched.append((module, module.tqdm))
            module.tqdm = tf_logging.EmptyTqdm
    set_hook = getattr(tf_logging, "set_tqdm_hook", None)
    if set_hook is not None:
        previous = set_hook(lambda factory, args, kwargs: tf_logging.EmptyTqdm(*args, **kwargs))
        restore_switch = lambda: set_hook(previous)  # noqa: E731
    elif tf_logging.is_progress_bar_enabled():
        tf_logging.disable_progress_bar()
        restore_switch = tf_logging.enable_progress_bar
    else:
        restore_switch = lambda: None  # noqa: E731

    def restore() -> None:
        restore_switch()
        for module, original in patched:
            module.tqdm = original

    return restore
