"""A served library model answers to its name as well as its id (``demoai serve``, the host)."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from app.core.errors import ConfigError
from app.workers.host import HostError, build_parser, config_from_args, resolve_slot
from tests.support.serve import start_serve


def _config(tmp_path: Path, *extra: str) -> dict[str, object]:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    argv = ["--model", f"gemma-a5fd3b62={model}", "--model", f"gemma-0badc0de={model}",
            "--model", f"other={model}", "--api-key", "k", *extra]  # fmt: skip
    return dict(config_from_args(build_parser().parse_args(argv), env={}).models)


def test_an_alias_resolves_to_its_model_and_ids_win(tmp_path: Path) -> None:
    models = _config(tmp_path, "--alias", "gemma=gemma-a5fd3b62", "--alias", "other=gemma-a5fd3b62")
    slot = resolve_slot(models, "gemma")  # type: ignore[arg-type]
    assert slot.name == "gemma-a5fd3b62" and slot.aliases == ("gemma",)  # "other" is an id
    assert resolve_slot(models, "gemma-a5fd3b62") is slot  # type: ignore[arg-type]
    assert resolve_slot(models, "other").name == "other"  # type: ignore[arg-type]


def test_an_alias_two_models_share_is_a_400_naming_both(tmp_path: Path) -> None:
    models = _config(tmp_path, "--alias", "gemma=gemma-a5fd3b62", "--alias", "gemma=gemma-0badc0de")
    with pytest.raises(HostError) as err:
        resolve_slot(models, "gemma")  # type: ignore[arg-type]
    assert err.value.status == 400 and err.value.code == "model_ambiguous"
    assert "gemma-0badc0de, gemma-a5fd3b62" in err.value.message
    with pytest.raises(HostError) as missing:
        resolve_slot(models, "llama")  # type: ignore[arg-type]
    assert missing.value.status == 404 and missing.value.code == "model_not_found"
    assert "gemma-a5fd3b62 (also gemma)" in missing.value.message


def test_an_alias_of_nothing_served_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ALIAS=NAME"):
        _config(tmp_path, "--alias", "gemma=nope")
    with pytest.raises(ConfigError, match="ALIAS=NAME"):
        _config(tmp_path, "--alias", "gemma")


def test_serve_answers_to_the_library_name(gemma_gguf: Path, tmp_path: Path) -> None:
    from app.core.models.registry import ModelRegistry
    from app.core.workspace import Workspace

    ws = Workspace.open(tmp_path / "ws")
    rec = ModelRegistry(ws).import_gguf(gemma_gguf, copy=False, name="gemma")
    ws.close()
    assert rec.id != "gemma"
    proc, out, url = start_serve(
        tmp_path / "ws", "--model", "gemma", "--port", "0", "--api-key", "k3", "--threads", "2"
    )
    try:
        assert f"Models:  {rec.id} (also gemma)" in out, out
        c = openai.OpenAI(base_url=url, api_key="k3", max_retries=0, timeout=120)
        listed = c.models.list().data
        assert [(m.id, getattr(m, "aliases", None)) for m in listed] == [(rec.id, ["gemma"])]
        r = c.completions.create(model="gemma", prompt="One, two,", max_tokens=4, temperature=0)
        assert r.model == rec.id and r.choices[0].text.strip()
        with pytest.raises(openai.NotFoundError) as err:
            c.completions.create(model="gemm", prompt="x", max_tokens=1)
        assert f"Served: {rec.id} (also gemma)" in str(err.value)
    finally:
        proc.terminate()
        assert proc.wait(15) == 0
