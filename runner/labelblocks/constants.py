"""The few values the command line shows in its options' help (choices, defaults), and the
names of a project's files, kept apart from the modules that use them so that ``labelblocks
--help`` and the reading commands import nothing heavy."""

from __future__ import annotations

# where an upload puts files: a category, or "split" (80/20 training/testing by content hash)
UPLOAD_CATEGORIES = ("training", "validation", "testing", "split")

# the largest image accepted, in pixels (width x height); `upload --max-pixels` and
# `serve --max-pixels` change it. Checked from the header, before anything is decoded.
MAX_IMAGE_PIXELS = 178_956_970

# what `labelblocks export` writes
EXPORT_FORMATS = ("info", "coco", "yolo")

# a project's data folder (``.labelblocks``) holds the SQLite file, or the URL of its database
# server, and its blobs (or the URL of where they are, with a cache of local copies)
DB_NAME = "project.db"
DB_CONFIG = "database.json"  # a project on a database server: {"url": ...}, never with a password
BLOB_DIR = "blobs"
BLOB_CONFIG = "blobs.json"  # in the data folder when the blobs live elsewhere: {"url": ...}
BLOB_CACHE = "blob-cache"  # local copies of remote blobs

# ids bound as parameters of one IN (...) up to this many; more go as one JSON list (json_each):
# SQLite binds at most 32,766 parameters
IDS_AS_PARAMETERS = 500

# the schema version the store migrates to (store/schema.py's last migration; a test checks)
SCHEMA_VERSION = 15
