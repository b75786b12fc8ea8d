"""An organization database's tables: its info, members' keys, blocks and their versions,
secrets, uploads, attached projects and the copies they run (created by migration 13)."""

from __future__ import annotations

from sqlalchemy import Column, Float, ForeignKey, Integer, MetaData, String, Table, Text

metadata = MetaData()  # apart from the project's tables (schema.metadata); schema.create_all makes both


# An organization's own tables (v13), used in an organization's folder (`labelblocks org init`):
# the organization, its members' keys, its blocks and their immutable versions, the blocks'
# secrets (encrypted with a key kept outside the database), uploads under way, and the
# projects attached to it.
org_info = Table(
    "org_info",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("name", String, nullable=False),
    Column("created_at", Float, nullable=False),
)

org_keys = Table(
    "org_keys",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String, nullable=False),
    Column("role", String, nullable=False),  # admin | member
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=True),
)

org_blocks = Table(
    "org_blocks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String, nullable=False, unique=True),
    Column("description", Text, nullable=False),
    Column("operates_on", Text, nullable=False),  # JSON list
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

org_block_versions = Table(
    "org_block_versions",
    metadata,
    Column("block_id", Integer, ForeignKey("org_blocks.id", ondelete="CASCADE"), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("sha256", String(64), nullable=True),  # NULL: a container image registered without a folder
    Column("size", Integer, nullable=False),
    Column("parameters", Text, nullable=False),  # the parameters.json, as JSON
    Column("command", Text, nullable=False),  # JSON list: what runs in the folder
    Column("image", String, nullable=True),
    Column("build_log", Text, nullable=False),
    Column("pushed_by", String, nullable=False),
    Column("created_at", Float, nullable=False),
)

org_secrets = Table(
    "org_secrets",
    metadata,
    Column("block_id", Integer, ForeignKey("org_blocks.id", ondelete="CASCADE"), primary_key=True),
    Column("key", String, primary_key=True),
    Column("token", Text, nullable=False),  # encrypted (Fernet) with the organization's key file
    Column("updated_at", Float, nullable=False),
)

org_uploads = Table(
    "org_uploads",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("block_name", String, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size", Integer, nullable=False),
    Column("key_id", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
)

org_attachments = Table(
    "org_attachments",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("project_name", String, nullable=False),
    Column("key_id", Integer, nullable=False),
    Column("token", Text, nullable=False),  # the attachment's own key, encrypted with the organization's
    Column("created_at", Float, nullable=False),
)

# A project's side (v13): the organizations it is attached to, with the last list of their
# blocks it saw, and a verified copy of each organization block version it ran.
org_links = Table(
    "org_links",
    metadata,
    Column("org_id", Integer, primary_key=True, autoincrement=False),
    Column("name", String, nullable=False),
    Column("url", String, nullable=False),
    Column("attachment_id", Integer, nullable=False),
    Column("catalogue", Text, nullable=False),  # JSON: the organization's blocks and versions
    Column("attached_at", Float, nullable=False),
    Column("refreshed_at", Float, nullable=False),
)

org_block_copies = Table(
    "org_block_copies",
    metadata,
    Column("org_id", Integer, primary_key=True, autoincrement=False),
    Column("block_id", Integer, primary_key=True, autoincrement=False),
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("name", String, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("path", String, nullable=False),
    Column("sealed_env", Text, nullable=True),  # the block's secrets, as the organization sealed them
    Column("fetched_at", Float, nullable=False),
)

ORG_TABLES = (org_info, org_keys, org_blocks, org_block_versions, org_secrets, org_uploads, org_attachments,
              org_links, org_block_copies)

