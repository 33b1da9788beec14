"""The runtime: the hub process (app wiring), the CLI command groups, demo, simulate, seed, config."""
