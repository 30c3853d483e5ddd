"""distill-r1: distil reasoning LLMs the DeepSeek-R1 way."""

__version__ = "0.1.0"
