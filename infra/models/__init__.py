"""The preset templates: one YAML file per model type, data only.

Loading and validating them is :mod:`domain.presets`; nothing here is code.
"""
