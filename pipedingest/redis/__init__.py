"""Redis Streams: how several daemons share work (the only module family that imports txredisapi).

``client.py`` is the connection (commands with deadlines, readiness); ``streams.py`` the declarations of
the ``redis: streams:`` section and the entry format; ``consumer.py`` the services that read a stream and feed
its entries to a pipeline (work queues through a consumer group, with a reclaimer for the entries of dead
consumers; broadcast streams from the last id seen).
"""
