"""Public facade: ``from topoverify import topology`` (interim during the restructure)."""

from topoverify.measure import topology as _impl

globals().update({k: v for k, v in vars(_impl).items() if not k.startswith("__")})
__all__ = _impl.__all__
