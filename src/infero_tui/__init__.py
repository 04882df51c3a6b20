"""`infero tui`: the Textual operator console. Talks to the network only through its client."""
