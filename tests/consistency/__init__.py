"""A Jepsen-style consistency checker over real mcp-router instances (issue 10)."""
