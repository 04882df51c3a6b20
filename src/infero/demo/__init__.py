"""The demo backend: a small, clearly labelled fake LLM for first runs and benchmarks."""
