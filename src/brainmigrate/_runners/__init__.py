"""The step runners: one per migration kind, behind one small protocol."""
