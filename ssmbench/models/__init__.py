"""Models on ssmbench's ops: published configs, random-weight builds, Hugging Face checkpoints."""
from .checkpoints import CheckpointError, from_pretrained, load_tokenizer, read_config

__all__ = ["CheckpointError", "from_pretrained", "load_tokenizer", "read_config"]
