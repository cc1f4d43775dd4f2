"""The deploy wing: every runtime and file format a network is exported to, timed in and checked in.

* :mod:`deploy.onnx_graph`: the one place that calls the ONNX exporter (static or dynamic shapes, one-line errors);
* :mod:`deploy.onnx_runtime` and :mod:`deploy.openvino_runtime`: one file per runtime, each a session class with
  the same small interface (:class:`deploy.registry.Session`) and its ``runtime_info``;
* :mod:`deploy.registry`: runtime name -> backend, and the check that a runtime's packages are installed;
* :mod:`deploy.onnx_export`: the exported detector and backbone (priors and NMS in the graph, metadata) and the
  parity check of an export against PyTorch.

``latency/runtimes.py`` (block and network timing), ``engine/onnx_inference.py`` (evaluation and detection),
``export.py`` and the generated ``profile_latency.py`` all go through these files, so adding a runtime is adding one
backend file and one line in the registry. The files the profiler embeds (``onnx_graph``, the backends, ``registry``)
import only torch and the standard library at module level and keep to Python 3.8 syntax.
"""
