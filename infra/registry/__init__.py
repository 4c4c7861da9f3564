"""Local Apicurio Registry (Confluent-compatible schema registry API) from the official Maven artifact: fetch, start,
stop."""
