"""Content hashing and the content-addressed artifact store on disk (no database here)."""

from labctl.artifacts.context import (
    ContextError,
    ContextInput,
    ContextOutput,
    RunContext,
    read_context,
    write_context,
)
from labctl.artifacts.hashing import artifact_id, dir_content_hash, path_identity_hash
from labctl.artifacts.outputs import checkpoint_steps, hash_outputs, read_output_hashes
from labctl.artifacts.store import (
    ArtifactMeta,
    HashMismatch,
    object_dir,
    read_meta,
    remove_alias_link,
    remove_object,
    set_alias_link,
    store_output,
    verify_object,
)

__all__ = [
    "ArtifactMeta",
    "ContextError",
    "ContextInput",
    "ContextOutput",
    "HashMismatch",
    "RunContext",
    "artifact_id",
    "checkpoint_steps",
    "dir_content_hash",
    "hash_outputs",
    "object_dir",
    "path_identity_hash",
    "read_context",
    "read_meta",
    "read_output_hashes",
    "remove_alias_link",
    "remove_object",
    "set_alias_link",
    "store_output",
    "verify_object",
    "write_context",
]
