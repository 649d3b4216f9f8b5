"""Data-migration workers on a Ray cluster, from the optional ``ray`` extra
(``pip install 'brainmigrate[ray]'``)::

    from brainmigrate.ray import RayExecutor

    await migrator.execute("0007_embed_memories", executor=RayExecutor(workers=4, num_gpus=1))

The run is claimed and settled by the calling process, as always; its workers are Ray actors, each
constructing the migration (and its model) once, opening its own connections, and leasing chunks
of the run from PostgreSQL until none is left. An actor that dies frees its lease with its
session; the others, or a replacement, finish the run from its checkpoints.
"""

try:
    import ray as _ray  # noqa: F401
except ImportError as _exc:
    from ._errors import ConfigError as _ConfigError

    raise _ConfigError(
        "brainmigrate.ray needs Ray, which is not installed: pip install 'brainmigrate[ray]'"
    ) from _exc

from ._executors.ray import RayExecutor

__all__ = ["RayExecutor"]
