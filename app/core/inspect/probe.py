"""A prompt through the model: the answer's token probabilities, a logit lens, attention maps.

Runs in a worker (it loads the model with the inference engines of ``app.core.infer``):

- **Answer**: greedy generation with the engine's own log-probabilities, for HF models
  and GGUF files alike: each answer token with its probability and the top-k
  alternatives at its position.
- **Logit lens** (HF models): the residual stream after each decoder layer (captured by
  forward hooks), put through the model's final norm and output head: the likeliest
  token and its probability per layer and position. After the last layer this is the
  model's own output, which the tests check.
- **Attention** (HF models): every layer's and head's attention weights over the prompt
  and answer (eager attention), saved as a float16 ``.npy`` array (layers, heads, n, n)
  next to the report; never pickled.

Sequences are cut to their last ``max_positions`` tokens for the lens and attention.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from app.core.errors import ConfigError

ProgressFn = Callable[[float | None, str], None]

#: Positions per block when projecting hidden states onto the vocabulary (bounded memory).
_LENS_BLOCK = 32


def _text(piece: bytes) -> str:
    return piece.decode("utf-8", errors="replace")


def probe(
    path: str | Path,
    prompt: str,
    *,
    max_tokens: int = 24,
    top_k: int = 5,
    max_positions: int = 128,
    threads: int | None = None,
    attention_file: str | Path | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Generate greedily from ``prompt`` and look inside the forward pass (see the module doc)."""
    from app.core.infer.engines import EngineOptions, open_engine
    from app.core.infer.sampling import SamplingParams

    if not prompt:
        raise ConfigError("The prompt is empty.", "Give some text to run through the model.")
    if not 0 <= max_tokens <= 512 or not 1 <= top_k <= 20 or not 2 <= max_positions <= 1024:
        raise ConfigError(
            "max_tokens must be 0-512, top_k 1-20 and max_positions 2-1024.",
            "Use smaller values.",
        )
    report = progress or (lambda _f, _m: None)
    report(None, "loading the model")
    options = EngineOptions(threads=threads) if threads else EngineOptions()
    engine = open_engine(path, options=options)
    try:
        prompt_ids = engine.prompt_tokens(prompt)
        answer: list[dict[str, Any]] = []
        if max_tokens:
            report(0.2, "generating")
            params = SamplingParams(temperature=0.0, max_tokens=max_tokens, seed=0)
            for chunk in engine.complete(prompt, params, logprobs=top_k):
                for t in chunk.logprobs:
                    answer.append(
                        {
                            "id": t.token,
                            "text": _text(t.piece),
                            "prob": math.exp(t.logprob) if t.logprob is not None else None,
                            "top": [
                                {"id": i, "text": _text(p), "prob": math.exp(lp)}
                                for i, p, lp in t.top
                            ],
                        }
                    )
        out: dict[str, Any] = {
            "prompt": prompt,
            "prompt_tokens": [{"id": i, "text": _text(engine.token_bytes(i))} for i in prompt_ids],
            "answer": answer,
            "text": "".join(a["text"] for a in answer),
        }
        ids = (prompt_ids + [a["id"] for a in answer])[-max_positions:]
        from app.core.infer.hf_engine import HFEngine

        if isinstance(engine, HFEngine):
            report(0.6, "logit lens and attention")
            out.update(_inside(engine, ids, attention_file))
        else:
            out["lens"] = None
            out["attention"] = None
            out["inside_unavailable"] = (
                "The logit lens and attention maps need a Hugging Face model: llama.cpp does "
                "not expose per-layer states or attention weights."
            )
        report(1.0, "done")
        return out
    finally:
        engine.close()


def _inside(engine: Any, ids: list[int], attention_file: str | Path | None) -> dict[str, Any]:
    import torch

    model = engine.model
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    norm = getattr(decoder, "norm", None)
    head = base.get_output_embeddings()
    if layers is None or norm is None or head is None:
        return {
            "lens": None,
            "attention": None,
            "inside_unavailable": f"{type(base).__name__} has no decoder layers / final norm "
            "the lens knows how to find.",
        }
    softcap = getattr(base.config, "final_logit_softcapping", None)
    previous = base.config._attn_implementation
    base.set_attn_implementation("eager")  # sdpa returns no attention weights
    captured: dict[int, Any] = {}
    hooks = [
        layer.register_forward_hook(
            lambda _m, _a, o, i=i: captured.__setitem__(i, o[0] if isinstance(o, tuple) else o)
        )
        for i, layer in enumerate(layers)
    ]
    try:
        with torch.no_grad():
            res = model(input_ids=torch.tensor([ids]), output_attentions=True)
            logits = res.logits[0].float()
            lens_rows: list[list[dict[str, Any]]] = []
            for i in range(len(layers)):
                h = captured[i][0] if captured[i].dim() == 3 else captured[i]
                row: list[dict[str, Any]] = []
                for s in range(0, h.shape[0], _LENS_BLOCK):
                    lg = head(norm(h[s : s + _LENS_BLOCK])).float()
                    if softcap:
                        lg = torch.tanh(lg / softcap) * softcap
                    probs = torch.softmax(lg, dim=-1)
                    p, top = probs.max(dim=-1)
                    for tok, pr in zip(top.tolist(), p.tolist(), strict=True):
                        row.append({"id": tok, "text": _text(engine.token_bytes(tok)), "prob": pr})
                lens_rows.append(row)
            final_probs = torch.softmax(logits, dim=-1)
            fp, ftop = final_probs.max(dim=-1)
            attn = [a[0].float().numpy() for a in (res.attentions or ()) if a is not None]
    finally:
        for hk in hooks:
            hk.remove()
        base.set_attn_implementation(previous)
    out: dict[str, Any] = {
        "positions": [{"id": i, "text": _text(engine.token_bytes(i))} for i in ids],
        "lens": {
            "layers": len(layers),
            "rows": lens_rows,  # rows[layer][position]: the next token predicted there
            "output": [
                {"id": t, "text": _text(engine.token_bytes(t)), "prob": p}
                for t, p in zip(ftop.tolist(), fp.tolist(), strict=True)
            ],
        },
    }
    if len(attn) == len(layers):
        stack = np.stack(attn)  # (layers, heads, n, n)
        info: dict[str, Any] = {"layers": stack.shape[0], "heads": stack.shape[1], "n": len(ids)}
        if attention_file is not None:
            np.save(Path(attention_file), stack.astype(np.float16), allow_pickle=False)
            info["file"] = str(attention_file)
        out["attention"] = info
        out["_attention_array"] = stack  # for callers in this process; dropped from JSON
    else:
        out["attention"] = None
    return out


def load_attention(path: str | Path) -> np.ndarray:
    """The (layers, heads, n, n) attention array saved by :func:`probe` (never unpickled)."""
    arr: np.ndarray = np.load(Path(path), allow_pickle=False)
    if arr.ndim != 4 or arr.shape[2] != arr.shape[3]:
        raise ConfigError(f"{path} is not an attention array (layers, heads, n, n).")
    return arr
