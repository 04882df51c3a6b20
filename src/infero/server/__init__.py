"""The public server: OpenAI-compatible API, connector links, routing, queue, operations."""
