"""What the CLI, the HTTP server and Python programs share: reading a run's events, and (as it
grows) starting, steering and inspecting runs."""
