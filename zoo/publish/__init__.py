"""Stand-ins, building the registry, model cards, pushing to the Hub."""
