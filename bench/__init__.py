"""lookserve.bench: load generator, Triton statistics breakdown, config variants and the search bench.

* :mod:`lookserve.bench.load` — closed-loop sweeps and open-loop (constant/Poisson) rates against
  a served model or a client chain; per point: throughput, latency percentiles, errors by kind,
  Triton statistics deltas and the client + network / queue / compute split; JSON, Markdown, PNG;
  :func:`~lookserve.bench.load.compare` of two runs as ratios.
* :mod:`lookserve.bench.variants` — typed config variants (dynamic batching, instances, FP32
  input, int8) served side by side; synthetic conv models where no trained model exists.
* :mod:`lookserve.bench.perf_analyzer` — NVIDIA's perf_analyzer as a second engine (same load
  points, its CSV as a lookserve report), its install from the tritonclient 2.41.0 wheel, and
  input data for BYTES models.
* :mod:`lookserve.bench.tune` — config search (instances × threads × queue delay × max batch)
  under a latency or throughput objective; the winner written as a config variant.
* :mod:`lookserve.bench.search` — hnswlib vs exact (numpy) vs faiss HNSW: recall@k, QPS, build
  time and memory.
* :mod:`lookserve.bench.reliability` — faults and bad inputs under load, every answer checked.
* :mod:`lookserve.bench.swap` — look-chain latency across model swaps, mixed versions counted.
* :mod:`lookserve.bench.report` — environment capture, atomic writers, the default output folder.
"""
