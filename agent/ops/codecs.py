"""The compression codec: from the agent's config for a backup (chosen once, recorded in the MANIFEST by
the orchestrator), from the MANIFEST for a restore (never the current flags)."""

from __future__ import annotations

from typing import Any

from agent.catalog.manifest import Manifest
from agent.config import AgentConfig
from agent.errors import FailedPrecondition
from agent.pipeline import compression


def codec_options(config: AgentConfig) -> compression.CodecOptions:
    return compression.CodecOptions(
        level=config.compression_level,
        external_compressor=config.external_compressor,
        external_decompressor=config.external_decompressor,
        external_extension=config.external_compressor_extension or "",
    )


def codec_for_backup(config: AgentConfig) -> compression.Codec:
    return compression.get_codec(config.compression_engine_name, codec_options(config))


def compression_fields(codec: compression.Codec, config: AgentConfig) -> dict[str, Any]:
    """CompressionEngine / SkipCompress / ExternalDecompressor as MANIFEST keys; the decompressor recorded
    is --manifest-external-decompressor when set (Vitess's flag), else the one the codec uses."""
    fields = compression.manifest_compression(codec)
    decompressor = fields["external_decompressor"]
    if decompressor and config.manifest_external_decompressor:
        decompressor = config.manifest_external_decompressor
    return {
        "CompressionEngine": fields["compression_engine"],
        "SkipCompress": fields["skip_compress"],
        "ExternalDecompressor": decompressor,
    }


def allowed_decompressors(config: AgentConfig) -> list[str]:
    return [c.strip() for c in config.allowed_external_decompressors.split(";") if c.strip()]


def codec_for_restore(manifest: Manifest, config: AgentConfig) -> compression.Codec:
    """A restore follows the MANIFEST, never the current compression flags. A command the MANIFEST names
    runs only when it is the configured --external-decompressor or listed in
    --allowed_external_decompressors: a command taken from storage is code execution."""
    recorded = (manifest.external_decompressor or "").strip()
    try:
        return compression.codec_for_manifest(
            manifest.compression_engine,
            bool(manifest.skip_compress),
            recorded,
            decompressor_override=config.external_decompressor,
            allow_manifest_decompressor=recorded in allowed_decompressors(config),
        )
    except FailedPrecondition as e:
        if recorded:
            raise FailedPrecondition(
                f"{e}; or, if you trust the command the MANIFEST records, list it in "
                f"--allowed_external_decompressors"
            ) from None
        raise
