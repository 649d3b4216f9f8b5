"""The model: what users write and get back (metadata, base classes, config, results, states).

No I/O; it imports nothing of brainmigrate's but the errors."""
