"""Sensor anomaly detection: a dense autoencoder scores each machine reading by its reconstruction error and
flags it above the threshold that travelled with the model. The use case is ``use_case.SensorAnomaly``."""
