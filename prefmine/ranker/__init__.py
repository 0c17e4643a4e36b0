"""The sequential ranker: causal self-attention over behaviour, items as ID + text embeddings."""
