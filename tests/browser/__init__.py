"""Dashboard and API docs in a real headless chromium."""
