"""Where processed articles are kept: the interface in ``base``, SQLite and Firestore behind it."""
