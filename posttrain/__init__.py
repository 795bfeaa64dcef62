"""posttrain: take a pretrained causal language model through post-training."""

__version__ = "0.1.0"
