"""`infero llm`: the LLM connector that dials the server and relays to a local backend."""
