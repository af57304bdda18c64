"""The leaves the house stands on: the typed-YAML engine and value parsers (``schema``), identity
(canonical form, digests, trial ids, seeds, cache keys), the registry shape, and the restricted
unpickler. They import nothing of the project but :mod:`raypoison.errors` and each other."""
