"""The parts of `bench.encoder_quality` (its command line is bench/encoder_quality.py): `data` reads and samples
the items and reviews, `metrics` scores a variant's vectors against the baselines, `variants` turns texts into
vectors (TF-IDF, a tiny BERT trained here, MiniLM frozen and fine-tuned).
"""
