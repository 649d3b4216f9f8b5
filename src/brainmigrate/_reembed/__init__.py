"""Re-embedding: a ready-made hybrid migration moving a vector column to a new embedding model."""
