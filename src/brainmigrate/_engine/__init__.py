"""The data engine: leased chunks, batches, set-based writes, checkpoints, before-images."""
