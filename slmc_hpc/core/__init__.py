"""The framework's system-independent pieces: protocols, the one outer test, integrators, self-learning, tuning."""
