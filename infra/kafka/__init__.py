"""Local Apache Kafka broker from the official Maven artifacts: fetch, start, stop."""
