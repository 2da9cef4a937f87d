"""Where llama.cpp's programs come from: shipped next to the converter, else the cache."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_a_shipped_binary_is_used_and_a_converter_only_tree_cannot_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.core.errors import ConfigError
    from app.core.export.llama_tools import find_llama_tool, llama_tool

    monkeypatch.setenv("DEMOAI_TOOLS_CACHE", str(tmp_path / "cache"))
    # what the offline installer unpacks: the converter sources, no CMakeLists.txt
    src = tmp_path / "opt/demoai/share/llama.cpp"
    (src / "gguf-py").mkdir(parents=True)
    (src / "convert_hf_to_gguf.py").write_text("# converter\n")
    assert find_llama_tool("llama-server", src) is None
    with pytest.raises(ConfigError, match=r"only llama\.cpp's converter"):
        llama_tool("llama-server", src=src)
    with pytest.raises(ConfigError, match=r"Unknown llama\.cpp program"):
        llama_tool("rm", src=src)
    # installers/build-offline.sh puts the built server in share/llama.cpp/bin/
    exe = src / "bin" / "llama-server"
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\n")
    assert find_llama_tool("llama-server", src) is None  # not executable: not a program
    exe.chmod(0o755)
    assert llama_tool("llama-server", src=src) == exe
    assert not (tmp_path / "cache").exists()  # nothing was built
