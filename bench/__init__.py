"""The relay benchmark: `python -m bench [--quick]` (or `just bench`). See docs/performance.md.

It starts, on loopback and each in its own process, a mock OpenAI backend, `infero server`,
`infero llm` connectors, a load generator and (for the memory figures) simulated idle
connectors; it runs the same load against the backend directly and through infero and prints
the figures, their ratios and the issue's targets.
"""
