"""Noise schedules (beta_t) and the DDPM process maths built on them; losses for training and likelihood.

The registered schedules live one per file (linear.py, cosine.py, scaled_linear.py); zoo/catalog.py imports them.
Each takes zero_terminal_snr=True, the rescale of Lin et al. 2024 Alg. 1 (zero_terminal_snr.py).
"""

from components.schedulers.schedule import PREDICTION_TYPES, NoiseSchedule

__all__ = ["PREDICTION_TYPES", "NoiseSchedule"]
