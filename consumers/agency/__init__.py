"""The agency node (DESIGN §11): the HTTP API through which any document management
system, in any language, sends, follows and receives documents on the bus."""
