"""Service requests as the bank works them: lifecycle rules and promises (rules, calendar), the
desk that moves them (desk), and what the customer is told (notices, mailer).

    python -m cardsystem.requests list [--overdue]
    python -m cardsystem.requests set-status REFERENCE STATUS --note TEXT
    python -m cardsystem.requests run-sla [--now ISO-TIME]
"""
