"""Multitask fine-tuning of one BERT encoder for SST-5, Quora paraphrase and STS (Multi-BERT)."""
