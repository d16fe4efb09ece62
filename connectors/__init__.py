"""Rasa channels of cardcare (served by the Rasa server, configured in credentials.yml)."""
