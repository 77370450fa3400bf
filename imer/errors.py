"""Errors a user can act on. Each message names the input and what to do next."""


class ImerError(Exception):
    """Base class: the CLI prints these without a traceback."""


class BadInput(ImerError):
    """A file, option or value the user gave cannot be used as it is."""


class MissingDependency(ImerError):
    """An optional package is needed for the requested backend."""

    def __init__(self, package: str, purpose: str, extra: str | None = None):
        hint = f"pip install 'imer[{extra}]'" if extra else f"pip install {package}"
        super().__init__(f"{purpose} needs the package '{package}': {hint}")
        self.package = package


class UnknownName(ImerError):
    """A registry lookup failed; the message lists the closest valid names."""


class IncompatibleBundle(ImerError):
    """A model bundle does not match the data or extractors it is used with."""
