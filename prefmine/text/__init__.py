"""The BERT text encoder: WordPiece tokenizer, MLM pretraining, rating fine-tuning, embeddings."""
