"""Named-entity extraction: spaCy in child processes, never on the reactor thread.

``pool`` is the service the daemon talks to; it cuts the articles of its ``queue`` into batches and hands them
to the processes of ``children``, each running ``child`` (the only module that imports spaCy) and speaking the
AMP of ``commands``. ``model`` finds a model without spaCy, ``errors`` says what can go wrong for an article.
"""
