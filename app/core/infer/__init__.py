"""Inference: engines (llama.cpp for GGUF, transformers for HF folders and adapters),
sandboxed chat templates, sampling parameters, streaming.

Importing this package is cheap: the heavy libraries load only with a model.
"""

from app.core.infer.engines import (
    FORMATS,
    MAX_TOP_LOGPROBS,
    Chunk,
    ContextOverflowError,
    Engine,
    EngineOptions,
    InferenceError,
    ModelLoadError,
    TokenLogprob,
    UnsupportedError,
    Usage,
    create_engine,
    detect_format,
    engine_class,
    open_engine,
    register_engine,
)
from app.core.infer.sampling import SamplingParams, StopBuffer
from app.core.infer.templates import (
    PRESETS,
    ChatTemplate,
    ChatTemplateError,
    UnsafeTemplateError,
    guess_preset,
    preset,
)

__all__ = [
    "FORMATS",
    "MAX_TOP_LOGPROBS",
    "PRESETS",
    "ChatTemplate",
    "ChatTemplateError",
    "Chunk",
    "ContextOverflowError",
    "Engine",
    "EngineOptions",
    "InferenceError",
    "ModelLoadError",
    "SamplingParams",
    "StopBuffer",
    "TokenLogprob",
    "UnsafeTemplateError",
    "UnsupportedError",
    "Usage",
    "create_engine",
    "detect_format",
    "engine_class",
    "guess_preset",
    "open_engine",
    "preset",
    "register_engine",
]
