"""Several environments (dev, staging, production) side by side, read-only, and the promotion guard."""
