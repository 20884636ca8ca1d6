"""How things look: the terminal, a reply shown live or plain or as JSON, transcripts."""
