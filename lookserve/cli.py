"""The one ``lookserve`` console script.

Each sub-package owns its commands in its own ``cli.py`` (a ``typer.Typer`` named ``app``) and
this module only mounts them. Those modules import nothing heavy at module level: TensorFlow,
onnxruntime and friends are imported inside the commands that need them.
"""

from __future__ import annotations

import importlib

import typer

from lookserve.logs import setup_logging

app = typer.Typer(
    name="lookserve",
    help="Fashion visual search on NVIDIA Triton: shop the look and product thumbnails over gRPC.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _main(
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, show_default=False, help="-v for INFO, -vv for DEBUG."),
) -> None:
    setup_logging(verbose)


# (module, attribute, mount name or None to merge its commands at the top level, help).
# Several rows may share a mount name: their commands are merged into one group (the first
# row's help names it).
_SUBCOMMANDS: tuple[tuple[str, str, str | None, str], ...] = (
    ("lookserve.server.cli", "app", None, "serve: run Triton"),
    ("lookserve.data.cli", "app", "data", "Generate, load, download and preview street2shop-format data."),
    ("lookserve.training.cli", "app", "train", "Train the detector, the embedder and the view classifier."),
    ("lookserve.training.cli", "eval_app", "eval", "Evaluate trained models and the client chains on held-out data."),
    ("lookserve.export.cli", "app", "export", "Export trained models to ONNX behind a parity gate."),
    ("lookserve.client.cli", "app", None, "look, thumbnails: the client chains"),
    ("lookserve.client.cli", "catalog_app", "catalog", "Build and inspect catalog indexes."),
    ("lookserve.client.catalog_cli", "app", "catalog", ""),
    ("lookserve.client.milvus_cli", "app", "catalog", ""),
    ("lookserve.client.models_cli", "app", "models", "Publish, promote and roll back model versions."),
    ("lookserve.client.cli", "eval_app", "eval", ""),
    ("lookserve.bench.cli", "app", "bench", "Latency and throughput benchmarks."),
    ("lookserve.bench.swap", "app", "bench", ""),
    ("lookserve.bench.reliability", "app", "bench", ""),
    ("lookserve.bench.catalog_update", "app", "bench", ""),
    ("lookserve.bench.catalog_backends", "app", "bench", ""),
    ("lookserve.bench.look_floor", "app", "bench", ""),
    ("lookserve.ui.cli", "app", None, "ui: the web page"),
    ("lookserve.demo", "app", None, "demo: the main job end to end"),
)


def _mount() -> None:
    groups: dict[str, typer.Typer] = {}
    for module_name, attr, name, help_text in _SUBCOMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            # Only a sub-package that does not exist yet is skipped; a missing third-party
            # dependency inside an existing module is a real error and propagates.
            if e.name == module_name:
                continue
            raise
        sub = getattr(module, attr, None)
        if sub is None:
            continue
        target = app if name is None else groups.get(name)
        if target is None:
            target = groups[name] = typer.Typer(no_args_is_help=True)
            app.add_typer(target, name=name, help=help_text)
        target.registered_commands.extend(sub.registered_commands)
        target.registered_groups.extend(sub.registered_groups)


_mount()

if __name__ == "__main__":  # pragma: no cover
    app()
