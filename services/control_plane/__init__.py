"""control-plane: creates topics and tables from the pipeline definitions (plan -> apply)."""
