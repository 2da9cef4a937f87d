"""DemoAI: an offline-first workbench for private language models."""

__version__ = "0.1.0"
