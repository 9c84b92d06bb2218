"""OptionError: an option out of range, raised by the constructor that owns it, in any layer.

``name`` is the argument's own name, so a caller that maps its keys onto constructors (the command
line's config) can name its key: ``SGD(lr=-1)`` says "SGD: lr = -1 must be > 0", ``--set optim.lr=-1``
says "optim.lr = -1 must be > 0".
"""


class OptionError(ValueError):
    """An option out of range, raised by the constructor that owns it.  ``name`` is the argument's name,
    so a caller that maps its own keys onto constructors (the command line's config) can name its key."""

    def __init__(self, owner: str, name: str, value, allowed: str):
        super().__init__(f"{owner}: {name} = {value!r} {allowed}")
        self.owner, self.name, self.value, self.allowed = owner, name, value, allowed


def check_option(owner: str, name: str, value, ok: bool, allowed: str):
    """Raise OptionError(owner, name, value, allowed) unless ``ok``."""
    if not ok:
        raise OptionError(owner, name, value, allowed)


def check_integer(owner: str, name: str, value, least: int):
    """Raise OptionError unless ``value`` is an int (not a bool) of at least ``least``."""
    check_option(owner, name, value, isinstance(value, int) and not isinstance(value, bool) and value >= least,
                 f"must be an integer >= {least}")
