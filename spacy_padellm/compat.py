"""Differences between the transformers versions we support.

transformers 5.2x renamed the key/value cache argument and output from
`past_key_values` to `cache`; 4.x only knows the old name.
"""
import inspect
from typing import Any


def _base_model(model: Any) -> Any:
    get_base = getattr(model, "get_base_model", None)  # peft wrappers
    return get_base() if callable(get_base) else model


def cache_argument(model: Any) -> str:
    """The name of the keyword that passes a key/value cache to `forward`."""
    params = inspect.signature(_base_model(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def output_cache(output: Any) -> Any:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values
