"""ilm: the InternLM2 training recipe in one hackable package."""

__version__ = "0.1.0"
