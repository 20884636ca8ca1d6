"""The chat REPL: the loop, its slash commands, its line input."""
