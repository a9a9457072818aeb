"""Conditioners (LDM's conditioning switch): text (CLIP, BERT) and class-label tokens for cross-attention,
semantic maps for concatenation. The contract is in base.py; zoo/catalog.py imports each module to register it.
"""
