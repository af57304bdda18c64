"""The execution layer: the only part of raypoison that imports Ray."""
