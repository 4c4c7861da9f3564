"""Second use case: anomaly detection on machine sensor readings with a Keras autoencoder."""
