"""Lab solutions: the references the lab notebooks show (hidden) and the tests import."""
