"""Noise schedules (beta_t) and the DDPM process maths built on them; losses for training and likelihood.

The registered schedules live one per file (linear.py, cosine.py, scaled_linear.py); zoo/catalog.py imports them.
"""

from components.schedulers.schedule import PREDICTION_TYPES, NoiseSchedule

__all__ = ["PREDICTION_TYPES", "NoiseSchedule"]
