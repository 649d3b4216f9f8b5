"""pytest plugin for brainmigrate: throwaway PostgreSQL databases and reversibility checks."""
