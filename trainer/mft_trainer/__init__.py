"""MFTCoder-style multi-task fine-tuning of GPT-NeoX models on ATorch."""

__version__ = "0.1.0"
