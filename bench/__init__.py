"""lookserve.bench: load generator, Triton statistics breakdown, config variants and the search bench.

* :mod:`lookserve.bench.load` — closed-loop sweeps and open-loop (constant/Poisson) rates against
  a served model or a client chain; per point: throughput, latency percentiles, errors by kind,
  Triton statistics deltas and the client + network / queue / compute split; JSON, Markdown, PNG;
  :func:`~lookserve.bench.load.compare` of two runs as ratios.
* :mod:`lookserve.bench.variants` — typed config variants (dynamic batching, instances, FP32
  input, int8) served side by side; synthetic conv models where no trained model exists.
* :mod:`lookserve.bench.search` — hnswlib vs exact (numpy) vs faiss HNSW: recall@k, QPS, build
  time and memory.
* :mod:`lookserve.bench.report` — environment capture and atomic writers.
"""
