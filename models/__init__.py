"""FOCUS network and its torch-free contract.

Importing this package imports nothing heavy: ``models.tasks``, ``models.config`` and
``models.processing`` are torch-free so the service can use them; the network modules
(``models.focus``, ``models.build`` ...) import torch when they are imported themselves.
"""
