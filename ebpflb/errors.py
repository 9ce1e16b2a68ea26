"""Every exception ebpflb raises on purpose. The CLI turns any of them into one line
and exit status 1."""

from __future__ import annotations


class EbpflbError(Exception):
    """Base of all ebpflb errors."""


class InvalidObjectError(EbpflbError):
    """A Kubernetes object could not be translated; the message names the object."""


class SourceError(EbpflbError):
    """A source (manifest directory, API server) could not be read."""


class DataplaneError(EbpflbError):
    """The data path could not be set up or written."""


class BpfUnavailableError(DataplaneError):
    """BPF cannot run here (no bcc, no headers, no privileges); the message says why."""


class PinDirError(DataplaneError):
    """The pin directory is not safe to use (owner, mode, symlink); its pins are left."""


class MapMismatchError(DataplaneError):
    """A pinned map under one of ebpflb's names has another type, key or value size."""


class CapacityError(DataplaneError):
    """A change would overflow a map; it was refused whole."""

    def __init__(self, message: str, *, frontend: object = None,
                 frontends: tuple[object, ...] = ()) -> None:
        super().__init__(message)
        self.frontend = frontend  # the model.Frontend whose change did not fit, if known
        # Every frontend whose change did not fit, in plan order, when the data path
        # checked the whole plan in one pass (so a caller drops them all at once).
        self.frontends = frontends or ((frontend,) if frontend is not None else ())


class LabError(EbpflbError):
    """The network-namespace lab could not be built or torn down."""
