"""Generic model pieces shared by the domains (each domain keeps its own models)."""
