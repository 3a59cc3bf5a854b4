"""Errors a user can act on. Each carries a message that says what to do."""


class QuickdraftError(Exception):
    """Base class for quickdraft errors."""


class ModelLoadError(QuickdraftError):
    """A model file is missing, unreadable or not a valid GGUF."""


class IncompatibleVocabError(QuickdraftError):
    """Draft and target do not share a vocabulary."""


class InvalidRequestError(QuickdraftError):
    """A request parameter is out of range (empty prompt, K < 1, ...)."""


class ContextLengthError(InvalidRequestError):
    """The prompt does not fit in the model's context."""


class NodeUnavailableError(QuickdraftError):
    """A remote node (node://HOST:PORT) cannot be reached, dropped the connection or did not answer in time.
    For the target this fails the request (the server answers 503); a draft node's failure is absorbed."""
