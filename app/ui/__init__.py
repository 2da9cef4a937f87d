"""The window process: PySide6 only. Never imports torch, transformers or llama_cpp."""
