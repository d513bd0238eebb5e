"""refserver benchmarks: `python -m bench [--quick] [--json FILE] [--with-llama-cpp]`.

One run measures, on the same machine and the same weights (bench model made by
`tools/make_bench_model.py`): the backend's raw greedy loop, refserver over HTTP (one
stream, 1-8 concurrent streams, 1k-token prompt cold vs cached, speculative decoding,
memory), onnxruntime-genai's generator and llama.cpp (llama-cpp-python), and prints the
ratios.  Engines run in their own processes (`bench.workers`, the server) so that one never
holds threads or memory while another is timed.  No torch here.
"""
