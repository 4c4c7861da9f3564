"""The live monitor: predictions joined with their late labels per model version, live metrics and drift, and
the decisions the loop takes from them (roll back, promote or retire a shadow, retrain)."""
