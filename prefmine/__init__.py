"""prefmine: e-commerce user-preference mining and recommendation.

The ML library: data preparation, the BERT text encoder, the sequential ranker, the RL policy's simulator and
runtime, metrics and model bundles. It knows nothing of Ray Serve; Ray Train / RLlib wiring lives in `cluster/`.
"""

__version__ = "0.1.0"
