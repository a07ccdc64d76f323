"""The archive API's routers, one per resource (DESIGN §12)."""
