"""The `ponder` sub-commands, one module each, and what the commands that run a model share."""
