"""The exceptions of the shared core, in one hierarchy.

Callers catch :class:`SlimspectError` for "anything the core reports on purpose", or one
of the narrow classes below for a case they handle. Every message names the object it is
about (bucket and key, or file) and what differed, so that one line is enough to act on::

    SlimspectError
    +-- KeyFileError                 a PEM key file is missing, unreadable or not an Ed25519 key
    +-- EmbeddedServiceError         an embedded server (SeaweedFS, ...) did not start
    +-- OnnxMetadataError            an ONNX model lacks the slimspect metadata a runtime needs
    +-- StoreError                   anything the model store reports
        +-- StoreUnreachableError    the S3 endpoint does not answer
        +-- ModelNotFoundError       no such bucket, model, version or object
        +-- VersionExistsError       publishing a version that already exists
        +-- ModelIntegrityError      model file sha256/size differs from the manifest (tampered model)
        +-- ManifestSignatureError   manifest signature does not verify (tampered manifest)
        +-- UnknownSigningKeyError   manifest signed by a key that is not trusted (wrong key)
        +-- ManifestInvalidError     manifest.json does not parse or validate
"""

from __future__ import annotations


class SlimspectError(Exception):
    """Base of every error the slimspect core raises on purpose."""


class KeyFileError(SlimspectError):
    """A key file is missing, unreadable, or does not hold the expected Ed25519 key."""


class EmbeddedServiceError(SlimspectError):
    """An embedded server process could not be started or did not become ready."""


class OnnxMetadataError(SlimspectError, ValueError):
    """An ONNX model has no (or malformed) ``slimspect.*`` metadata: not a slimspect export."""


class StoreError(SlimspectError):
    """The model store could not complete an operation."""


class StoreUnreachableError(StoreError):
    """The S3 endpoint refused or timed out the connection."""


class ModelNotFoundError(StoreError):
    """The bucket, model, version or one of its objects does not exist."""


class VersionExistsError(StoreError):
    """A model version is immutable: publishing over an existing one is refused."""


class ModelIntegrityError(StoreError):
    """A model (or golden image) file does not match the sha256/size its manifest records."""


class ManifestSignatureError(StoreError):
    """The manifest signature is malformed or does not verify under the (trusted) key it names."""


class UnknownSigningKeyError(StoreError):
    """The manifest was signed by a key that is not among the trusted public keys."""


class ManifestInvalidError(StoreError):
    """manifest.json is not valid JSON, does not validate, or describes another model."""
