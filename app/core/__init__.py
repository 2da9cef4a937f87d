"""The domain: pure Python, no Qt, no heavy ML imports at module import time."""
