"""The process: settings, the app's wiring, the server and its roles, workers, the CLI."""
