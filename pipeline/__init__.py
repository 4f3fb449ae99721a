"""The staged pipeline: one module per stage, the stage contract, the runner and the CLI."""
