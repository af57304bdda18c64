"""The one training loop (``loop``), its recipe, PGD (``adversarial``) and the shared feature bank
that transfer heads train on. Plain PyTorch: no Ray, no rows, no files."""
