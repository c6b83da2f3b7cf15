"""Sampling: noise schedules, model wrappers, guidance and samplers (k-diffusion's conventions)."""
