"""Shared test helpers: a real server on loopback, a scripted connector, a fake backend."""
