"""Cloud Firestore as the article store (see ``store.py``)."""
from pipedingest.store.firestore.store import (  # noqa: F401
    ACCESS_RECHECK,
    COUNTS_FIELD,
    DATABASE_ID,
    DEFAULT_DATABASE,
    MAX_FIELD_TRANSFORMS,
    SHARDS_COLLECTION,
    TOKEN_FIELD,
    FirestoreStore,
    access_problem,
    document_id,
    field_name,
    is_transient,
    shard_of,
    text_of_field,
    wire_size,
)
