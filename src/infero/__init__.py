"""infero: one public, OpenAI-compatible API in front of private LLM runtimes and MCP servers."""

from infero.common.buildinfo import BUILD

__all__ = ["BUILD"]
__version__ = BUILD.version
