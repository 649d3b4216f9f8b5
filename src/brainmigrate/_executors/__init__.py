"""Executors that run a data run's workers outside this process (see ``_engine.executors``)."""
