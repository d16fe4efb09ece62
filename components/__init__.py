"""Custom Rasa NLU components of cardcare (referenced by module path in config.yml)."""
