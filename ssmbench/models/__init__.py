"""Models on ssmbench's ops: published configs, random-weight builds, Hugging Face checkpoints."""
from .checkpoints import CheckpointError, checkpoint_name, from_pretrained, load_tokenizer, read_config

__all__ = ["CheckpointError", "checkpoint_name", "from_pretrained", "load_tokenizer", "read_config"]
