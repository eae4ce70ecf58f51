"""What the CLI, the HTTP server and Python programs share: the Python client (api: Client and
RunHandle, aio: their asyncio twins), and the documents and readings the CLI and the HTTP API
make through it (a run's events, the list of runs, a run inspected)."""
