"""offload: a local LLM server that puts every layer where it belongs and tells the truth about it."""

__version__ = "0.1.0"
