"""``slimspect keys`` and ``slimspect models``: signing keys and the model store.

Store options come from :class:`StoreSettings` (``SLIMSPECT_STORE_*``); ``--endpoint``,
``--bucket``, ``--trusted-key`` and ``--signing-key`` override them. Every expected failure
prints one line (``Error: ...``) and exits 1, never a traceback.
"""

from __future__ import annotations

import functools
import json
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from slimspect.errors import ManifestInvalidError, SlimspectError
from slimspect.manifest import (
    ModelFile,
    ModelManifest,
    check_name,
    check_version,
    describe_errors,
    sha256_file,
)
from slimspect.settings import StoreSettings
from slimspect.signing import generate_keypair
from slimspect.store import ModelStore


def _print_table(table: Table) -> None:
    # A console per call: it sizes itself to the terminal (or COLUMNS) of this invocation.
    # Tables only; one-line results go through click.echo so that they never wrap.
    Console(highlight=False).print(table)


def _fail_cleanly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turns the core's expected errors into one-line click errors (exit code 1)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SlimspectError as exc:
            raise click.ClickException(str(exc)) from None
        except ValidationError as exc:
            raise click.ClickException(f"invalid store settings: {describe_errors(exc)}") from None
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


def _store_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--endpoint", help="S3 endpoint host:port [env SLIMSPECT_STORE_ENDPOINT]"),
        click.option("--bucket", help="bucket [env SLIMSPECT_STORE_BUCKET]"),
        click.option(
            "--trusted-key",
            "trusted_keys",
            multiple=True,
            type=click.Path(dir_okay=False, path_type=Path),
            help="public key trusted when verifying (repeatable) [env SLIMSPECT_STORE_TRUSTED_KEYS]",
        ),
        click.option(
            "--signing-key",
            type=click.Path(dir_okay=False, path_type=Path),
            help="private key used to publish [env SLIMSPECT_STORE_SIGNING_KEY]",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _open_store(
    endpoint: str | None,
    bucket: str | None,
    trusted_keys: tuple[Path, ...],
    signing_key: Path | None,
) -> ModelStore:
    overrides: dict[str, Any] = {"endpoint": endpoint, "bucket": bucket, "signing_key": signing_key}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if trusted_keys:
        overrides["trusted_keys"] = list(trusted_keys)
    return ModelStore.from_settings(StoreSettings(**overrides))


def _check_ref(name: str, version: str) -> None:
    check_name(name)
    check_version(version)


def _human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


# --- keys -----------------------------------------------------------------------------------


@click.group()
def keys() -> None:
    """Ed25519 key pairs that sign published models."""


@keys.command("generate")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="directory for signing.key (0600) and signing.pub",
)
@click.option("--force", is_flag=True, help="replace an existing key pair")
@_fail_cleanly
def keys_generate(out_dir: Path, force: bool) -> None:
    """Write a new signing.key / signing.pub pair into DIR."""
    files = generate_keypair(out_dir, force=force)
    click.echo(f"key id {files.key_id}")
    click.echo(f"private key {files.private_key} (keep secret; SLIMSPECT_STORE_SIGNING_KEY)")
    click.echo(f"public key  {files.public_key} (give to consumers; SLIMSPECT_STORE_TRUSTED_KEYS)")


# --- models ---------------------------------------------------------------------------------


@click.group()
def models() -> None:
    """List, show, verify, fetch and publish models in the store."""


@models.command("list")
@click.option("--name", help="only this model")
@_store_options
@_fail_cleanly
def models_list(name: str | None, **store: Any) -> None:
    """List complete (signed) model versions."""
    versions = _open_store(**store).list(name)
    if not versions:
        click.echo("no models" + (f" named {name}" if name else ""))
        return
    table = Table("name", "version", "created (UTC)", "format", "size", "sha256")
    for v in versions:
        table.add_row(
            v.name,
            v.version,
            v.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            v.format,
            _human_size(v.size_bytes),
            v.sha256[:12],
        )
    _print_table(table)


@models.command("show")
@click.argument("name")
@click.argument("version")
@click.option("--json", "as_json", is_flag=True, help="print the manifest as JSON")
@_store_options
@_fail_cleanly
def models_show(name: str, version: str, as_json: bool, **store: Any) -> None:
    """Show the verified manifest of NAME VERSION."""
    _check_ref(name, version)
    manifest = _open_store(**store).manifest(name, version)
    if as_json:
        click.echo(json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True))
        return
    _print_table(_manifest_table(manifest))


def _manifest_table(m: ModelManifest) -> Table:
    inp = m.input
    norm = inp.normalize
    colour = "gray" if inp.channels == 1 else "RGB"
    resize = f"letterbox pad {inp.pad_value}" if inp.letterbox else "stretch"
    metrics = {k: v for k, v in m.metrics.model_dump().items() if v is not None}
    lineage = {k: v for k, v in m.lineage.model_dump().items() if v is not None}
    rows = [
        ("created", m.created_at.isoformat()),
        ("format", m.format),
        ("model", f"sha256 {m.model.sha256}, {_human_size(m.model.size_bytes)}"),
        ("input", f"{inp.width}x{inp.height}, {colour}, {resize}"),
        ("normalize", f"scale {norm.scale:.6g}, mean {list(norm.mean)}, std {list(norm.std)}"),
        ("classes", ", ".join(f"{i}:{c}" for i, c in enumerate(m.class_names))),
        ("thresholds", f"score {m.thresholds.score}, iou {m.thresholds.iou}"),
        ("metrics", ", ".join(f"{k} {v}" for k, v in metrics.items()) or "-"),
        ("lineage", ", ".join(f"{k} {v}" for k, v in lineage.items()) or "-"),
    ]
    if m.golden is not None:
        expected = len(m.golden.expected)
        rows.append(("golden", f"sha256 {m.golden.sha256[:12]}, {expected} expected detections"))
    table = Table(title=f"{m.name} {m.version}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, value)
    return table


@models.command("verify")
@click.argument("name")
@click.argument("version")
@_store_options
@_fail_cleanly
def models_verify(name: str, version: str, **store: Any) -> None:
    """Download NAME VERSION to a temporary folder and verify signature and hashes."""
    _check_ref(name, version)
    with tempfile.TemporaryDirectory(prefix="slimspect-verify-") as tmp:
        fetched = _open_store(**store).fetch(name, version, tmp)
    m = fetched.manifest
    click.echo(
        f"OK {name}/{version}: signed by key {fetched.key_id}, "
        f"model sha256 {m.model.sha256} ({m.model.size_bytes} bytes)"
    )


@models.command("fetch")
@click.argument("name")
@click.argument("version")
@click.option(
    "--dest",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="the version lands in DEST/NAME/VERSION",
)
@_store_options
@_fail_cleanly
def models_fetch(name: str, version: str, dest: Path, **store: Any) -> None:
    """Download and verify NAME VERSION into DEST/NAME/VERSION."""
    _check_ref(name, version)
    fetched = _open_store(**store).fetch(name, version, dest)
    click.echo(f"OK {fetched.directory} (key {fetched.key_id})")


@models.command("publish")
@click.argument("onnx", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--manifest",
    "manifest_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="manifest JSON; 'model' (sha256/size) and 'created_at' are filled in when absent",
)
@click.option(
    "--golden", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="golden.png"
)
@_store_options
@_fail_cleanly
def models_publish(onnx: Path, manifest_path: Path, golden: Path | None, **store: Any) -> None:
    """Sign and upload ONNX as a new, immutable model version."""
    manifest = _load_manifest(manifest_path, onnx, golden)
    published = _open_store(**store).publish(onnx, manifest, golden_png=golden)
    click.echo(
        f"published {published.name}/{published.version} to {published.prefix} "
        f"(key {published.key_id}, sha256 {published.sha256[:12]}, {published.size_bytes} bytes)"
    )


def _load_manifest(path: Path, onnx: Path, golden: Path | None) -> ModelManifest:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ManifestInvalidError(f"cannot read manifest {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ManifestInvalidError(f"manifest {path} is not a JSON object")
    if "model" not in data:
        data["model"] = ModelFile.from_path(onnx).model_dump()
    if "created_at" not in data:
        data["created_at"] = datetime.now(UTC).isoformat()
    if (
        golden is not None
        and isinstance(data.get("golden"), dict)
        and "sha256" not in data["golden"]
    ):
        data["golden"]["sha256"] = sha256_file(golden)[0]
    return ModelManifest.from_dict(data, source=str(path))
