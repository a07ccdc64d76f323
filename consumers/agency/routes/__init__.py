"""The agency node's routers, one per resource (DESIGN §11)."""
