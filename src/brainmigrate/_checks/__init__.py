"""The standard checks of a project's migrations; public through :mod:`brainmigrate.testing`."""
