"""Recommendations: objects (which item events make an item), training, serving.

definition: the recommendation object and its validation; scoring: the model (pure
NumPy/SciPy); store: its SQL; hotwrite: top-N lists into the hot state; training:
the job that ties them; service: the domain facade the servicer calls; evaluate: the
offline evaluation command. Serving reads the hot state through services.profile.hotread.
"""
