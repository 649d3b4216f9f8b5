"""The HTTP API's machinery, public as :mod:`brainmigrate.http` (needs the ``http`` extra).

One job per module: ``auth`` (who calls), ``bodies`` (reading and checking request bodies and ids),
``runs`` (the background runs of this process), ``errors`` (errors as JSON responses), ``openapi``
(the OpenAPI document, as data), ``router`` (the endpoints).
"""
