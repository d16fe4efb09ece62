"""Errors the card system raises for requests it refuses (each has a customer-safe message)."""


class CardSystemError(Exception):
    """A request the card system refuses; `code` lets callers choose their wording."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class NotFound(CardSystemError):
    pass


class NotAllowed(CardSystemError):
    pass
