"""Inference backends behind one interface (``base.Backend``); ``factory.create_backend`` picks one.

Nothing heavy is imported here: each backend module imports its library when constructed.
"""
