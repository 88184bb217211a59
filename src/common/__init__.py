"""Training loop, model contract, losses and initialisers (MMRec-compatible names)."""
