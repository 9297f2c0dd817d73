"""Example pipeline definitions, the default CHUTE_SCHEMAS."""
