"""The app's shared model host: models added at run time, one copy per model, leases
(pins), idle unload, a memory budget and the host's own memory accounting."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.workers.host import build_parser, config_from_args
from app.workers.host_client import HostCallError, HostProcess
from tests.support.serve import start_serve


def chat(host: HostProcess, model: str, text: str = "Hi") -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 4}
    return dict(host.call("POST", "/v1/chat/completions", body, timeout=120))


def loaded(host: HostProcess) -> dict[str, int]:
    return {m["id"]: m["bytes"] for m in host.status()["models"] if m["loaded"]}


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[HostProcess]:
    h = HostProcess(threads=2, n_ctx=512, accept_models=True, idle_unload_s=1.0)
    h.start({})  # no model at start: the app's host gets them at run time
    yield h
    h.stop()


def test_register_is_refused_without_the_flag(gemma_gguf: Path) -> None:
    with HostProcess(threads=1, n_ctx=256) as h:
        h.start({"gemma": (gemma_gguf, "gguf")})
        with pytest.raises(HostCallError) as err:
            h.register("other", gemma_gguf, "gguf")
        assert err.value.status == 403 and err.value.code == "registration_disabled"
        assert [m["id"] for m in h.status()["models"]] == ["gemma"]


def test_demoai_serve_never_accepts_models(gemma_gguf: Path, tmp_path: Path) -> None:
    key = "serve-key-123"
    proc, _, url = start_serve(
        tmp_path / "ws", "--model", f"g={gemma_gguf}", "--port", "0",
        env={"DEMOAI_HOST_API_KEY": key},
    )  # fmt: skip
    try:
        h = HostProcess()
        h.port, h.token = int(url.rsplit(":", 1)[1].split("/")[0]), key
        with pytest.raises(HostCallError) as err:
            h.call("POST", "/v1/host/models", {"name": "x", "path": str(gemma_gguf)})
        assert err.value.status == 403
    finally:
        proc.terminate()
        proc.wait(10)


def test_register_checks_its_input(shared: HostProcess, gemma_gguf: Path, tmp_path: Path) -> None:
    bad: list[tuple[dict[str, Any], str]] = [
        ({"name": "m", "path": str(tmp_path / "missing.gguf")}, "model_path_missing"),
        ({"name": "m", "path": "relative/model.gguf"}, "invalid_path"),
        ({"name": "m", "path": str(gemma_gguf), "format": "pickle"}, "invalid_format"),
        ({"name": "m", "path": str(gemma_gguf), "template": "evil"}, "invalid_template"),
        ({"name": "../m", "path": str(gemma_gguf)}, "invalid_name"),
        ({"name": "m", "path": str(gemma_gguf), "aliases": "x"}, "invalid_type"),
        ({"name": "m", "path": str(gemma_gguf), "pinned": "yes"}, "invalid_type"),
        ({"name": "m", "path": str(gemma_gguf), "aliases": ["a\nb"]}, "invalid_aliases"),
        ({"name": "m", "path": str(gemma_gguf), "aliases": [" padded"]}, "invalid_aliases"),
    ]
    for body, code in bad:
        with pytest.raises(HostCallError) as err:
            shared.call("POST", "/v1/host/models", body)
        assert (err.value.status, err.value.code) == (400, code), body
        assert err.value.args[0]  # a message for the user
    assert shared.status()["models"] == []
    shared.register("g", gemma_gguf, "gguf")
    other = tmp_path / "other.gguf"
    other.symlink_to(gemma_gguf)
    with pytest.raises(HostCallError) as clash:
        shared.register("g", other, "gguf")  # the name serves another file already
    assert clash.value.status == 409


def test_one_copy_for_every_name_and_template(shared: HostProcess, gemma_gguf: Path) -> None:
    shared.register("gemma-1", gemma_gguf, "gguf", aliases=["gemma"], pinned=True)
    shared.register("gemma-1@chatml", gemma_gguf, "gguf", template="chatml", pinned=True)
    assert chat(shared, "gemma")["model"] == "gemma-1"  # the alias answers
    # A library name as a person typed it (an export is named "tiny-faq Q8_0") is an alias
    # too: the journey's chat with an export failed with "aliases must be at most 16 names".
    shared.register("gemma-2", gemma_gguf, "gguf", aliases=["gemma 270m Q4_K_M"], pinned=True)
    assert chat(shared, "gemma 270m Q4_K_M")["model"] == "gemma-2"
    chat(shared, "gemma-1@chatml")
    info = shared.call("GET", "/v1/models/gemma-1@chatml")
    assert info["capabilities"]["chat_template"] == "chatml"
    assert shared.call("GET", "/v1/models/gemma-1")["capabilities"]["chat_template"] != "chatml"
    st = shared.status()
    assert st["loaded_copies"] == 1  # two names, two templates, one copy of the weights
    copies = {m["weights"] for m in st["models"]}
    assert len(copies) == 1
    assert st["loaded_bytes"] > 50 * 2**20 and st["rss_bytes"] >= st["loaded_bytes"]


def test_pins_keep_a_model_and_idle_unload_frees_it(shared: HostProcess, gemma_gguf: Path) -> None:
    shared.register("g", gemma_gguf, "gguf", pinned=True)
    chat(shared, "g")
    time.sleep(2.5)  # idle unload after 1 s, checked every 0.25 s
    assert "g" in loaded(shared)  # leased: kept
    rss_loaded = shared.status()["rss_bytes"]
    shared.register("g", gemma_gguf, "gguf", pinned=False)
    deadline = time.monotonic() + 10
    while "g" in loaded(shared) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert loaded(shared) == {}
    assert shared.status()["rss_bytes"] < rss_loaded  # the memory really went back
    assert chat(shared, "g")["choices"]  # the next request loads it again


def test_memory_budget_unloads_the_least_recently_used(gemma_gguf: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    a.symlink_to(gemma_gguf)
    b.symlink_to(gemma_gguf)  # another path: another model as far as the host knows
    size_mb = gemma_gguf.stat().st_size // 2**20
    with HostProcess(
        threads=2, n_ctx=256, accept_models=True, memory_budget_mb=int(size_mb * 1.5)
    ) as h:
        h.start({})
        h.register("a", a, "gguf")
        h.register("b", b, "gguf")
        chat(h, "a")
        chat(h, "b")  # a + b would pass the budget: a (unleased, least recent) goes
        assert list(loaded(h)) == ["b"]
        h.register("b", b, "gguf", pinned=True)
        chat(h, "a")  # b is leased: kept, the load goes over budget rather than fail
        assert sorted(loaded(h)) == ["a", "b"]


def test_registrations_survive_a_restart(shared: HostProcess, gemma_gguf: Path) -> None:
    shared.register("g", gemma_gguf, "gguf", pinned=True)
    assert shared._proc is not None
    shared._proc.kill()
    shared._proc.wait()
    assert shared.ensure_running()
    assert [(m["id"], m["pinned"]) for m in shared.status()["models"]] == [("g", True)]


def test_host_flags_are_checked(tmp_path: Path) -> None:
    from app.core.errors import ConfigError

    parse = build_parser().parse_args
    with pytest.raises(ConfigError, match="at least one --model"):
        config_from_args(parse(["--api-key", "k"]), env={})
    cfg = config_from_args(parse(["--api-key", "k", "--accept-models"]), env={})
    assert cfg.accept_models and cfg.models == {}
    with pytest.raises(ConfigError, match="memory-budget"):
        config_from_args(parse(["--api-key", "k", "--accept-models", "--memory-budget-mb", "0"]))


def test_any_registration_body_is_a_slot_or_a_400(gemma_gguf: Path) -> None:
    """Whatever JSON a client sends, registration answers a slot or a clear 4xx."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from app.workers.host import HostConfig, HostError, registration_from_body

    config = HostConfig(models={}, api_key="k", accept_models=True)
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
    values = st.recursive(scalars, lambda c: st.lists(c, max_size=3), max_leaves=6)
    fields = st.sampled_from(["name", "path", "format", "template", "aliases", "pinned", "x"])
    good = {"name": "m", "path": str(gemma_gguf), "format": "gguf"}

    @settings(max_examples=300, derandomize=True, database=None, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
    @given(st.dictionaries(fields, values, max_size=6), st.booleans())
    def check(body: dict[str, Any], start_good: bool) -> None:
        b = {**good, **body} if start_good else body
        try:
            slot, pinned = registration_from_body(b, config)
        except HostError as exc:
            assert 400 <= exc.status < 500 and exc.message
        else:
            assert slot.path.is_absolute() and slot.path.exists()
            assert isinstance(pinned, bool)

    check()


def test_registering_while_requests_list_models(shared: HostProcess, gemma_gguf: Path) -> None:
    """Registrations from several threads while others list the models: no 500, none lost."""
    import threading

    errors: list[BaseException] = []

    def register(i: int) -> None:
        try:
            shared.register(f"m{i}", gemma_gguf, "gguf")
        except BaseException as exc:
            errors.append(exc)

    def listing() -> None:
        try:
            for _ in range(20):
                shared.call("GET", "/v1/models")
                shared.status()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(i,)) for i in range(40)]
    threads += [threading.Thread(target=listing) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    st = shared.status()
    assert sorted(m["id"] for m in st["models"]) == sorted(f"m{i}" for i in range(40))
    assert len({m["weights"] for m in st["models"]}) == 1  # forty names, one copy
