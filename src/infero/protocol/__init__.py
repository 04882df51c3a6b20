"""Wire formats: pydantic models and pure codecs. No I/O and no framework imports here."""
