"""The card system: customers, cards, statements, rewards and service requests.

Actions, connectors and command-line tools import this package; it knows nothing of
Rasa or WhatsApp. The default store is an embedded SQLite file; set CARDCARE_DB_URL to
use another database (e.g. PostgreSQL).
"""
