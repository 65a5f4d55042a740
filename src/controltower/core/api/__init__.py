"""REST routes of the core services, mounted under /api/v1."""
