"""Named-entity extraction: spaCy in ampoule child processes, never on the reactor thread.

``commands`` is the AMP protocol between the pool and its children, ``child`` the child process (the only module
that imports spaCy), ``pool`` the service the daemon talks to, ``model`` finds a model without spaCy, ``errors``
what can go wrong for an article.
"""
