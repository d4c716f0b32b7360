"""lookserve.data: street2shop-format data — generate, load, download, preview.

Modules (imported on demand; none is imported here, so ``import lookserve.data`` stays light):

* :mod:`lookserve.data.synth` — ``SynthConfig`` (presets ``tiny()``, ``small()``, ``default()``),
  ``generate(out_dir, config, seed) -> Path``, ``bench_street(...)``;
* :mod:`lookserve.data.render` — the procedural drawing (products, street scenes, shoe views);
* :mod:`lookserve.data.street2shop` — ``load(root) -> Street2Shop`` for generated or real data;
* :mod:`lookserve.data.footwear` — ``load_views(root)``, ``read_ground_truth(root)`` (the one reader
  of ``footwear/ground_truth.json``);
* :mod:`lookserve.data.download` — ``download(root, DownloadConfig)``, ``select_pairs(root)``;
* :mod:`lookserve.data.preview` — ``write_previews(data, out)``;
* :mod:`lookserve.data.difficulty` — ``colour_baseline(root)``;
* :mod:`lookserve.data.synthetic` — ``render_photos(n, h, w, seed)`` without writing a data set.
* :mod:`lookserve.data.pretrained` — ``mediapipe_model(relpath) -> Path``: MediaPipe's ``.tflite``
  models (Apache-2.0), fetched once from the mediapipe wheel and sha256-checked.

See ``data/README.md`` for the layout and the commands (``lookserve data --help``).
"""
