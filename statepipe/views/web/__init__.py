"""`statepipe serve`: the HTTP API, its event streams and the dashboard. A view like the CLI:
handlers parse a request, call the functions the CLI calls, and return the same documents."""
