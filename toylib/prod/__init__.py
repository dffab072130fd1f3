"""Production backends for the course's designs: PostgreSQL, NATS JetStream, OS processes.

Optional: nothing else in the course imports this layer, and the in-process toy stays the
default everywhere. ``available()`` probes the services before anything needs them.
"""
