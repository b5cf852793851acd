"""The server's domain: one ``Hub`` of services and the functions that take it."""
