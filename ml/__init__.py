"""The retraining core: topic contracts, replay, snapshot, validation, features, training, gate, registry, publish."""
