"""Hydra configuration tree, installed as the package ``analogtrain.conf``."""
