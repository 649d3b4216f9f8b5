"""Cross-cutting machinery below the runners and the engine: retries, telemetry."""
