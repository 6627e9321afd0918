"""Profile: the Profile API apps call at request time, and recommendations."""
