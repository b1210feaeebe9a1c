"""People's labels: oracles, label files, the batch transaction, the queries and the labeling page."""
