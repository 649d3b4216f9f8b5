"""The ``brainmigrate`` command line: each verb is a thin call of one public :class:`Migrator` method."""
