"""`infero mcp`: the MCP connector that dials the server and relays to a local MCP server."""
