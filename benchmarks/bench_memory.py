"""Memory and start-up of a decoder bundle: where the peak goes, against the floor ONNX Runtime
sets and against the peers on the same model.

Each side runs in a fresh process, in turn, for ``--rounds`` rounds; the figures are medians:
peak RSS (VmHWM) and RSS once loaded, load time (import included) and time to the first token
from process start (a 16-token prompt). Sides:

* ``edgert``: ``Generator(bundle)``, what an app does (the bundle's manifest checked, each file
  hashed once on the bytes handed to ONNX Runtime);
* ``ort-path``: ONNX Runtime alone on the decoder graph's file path, nothing checked: the floor
  of ONNX Runtime's own copies (it reads and prepacks the weights itself);
* ``ort-bytes``: ONNX Runtime alone on the graph's bytes, as edgert hands them over (the
  Python bytes and the copy the binding makes of them live at once while the session builds);
* ``ort-path-noprepack``: the floor with ONNX Runtime's prepacking off (what prepacking costs);
* ``llama.cpp`` (``--llama-python``: an environment with llama-cpp-python) on the GGUF the
  bundle came from, memory-mapped as llama.cpp does by default;
* ``genai`` (``--genai-python`` and ``--genai-folder``): onnxruntime-genai on its own export.

    python benchmarks/bench_memory.py build/bench/real-model/int4 [--gguf F.gguf --llama-python P]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROMPT = list(range(100, 116))

STATUS = """
def status():
    out = {}
    for line in open('/proc/self/status'):
        if line.startswith(('VmHWM:', 'VmRSS:')):
            out[line.split(':')[0]] = int(line.split()[1]) / 1024
    return out
"""

EDGERT = STATUS + """
import json, sys, time
t0 = time.perf_counter()
from edgert.runtime.llm.generator import Generator, SamplingParams
gen = Generator(sys.argv[1], threads=2)
load = time.perf_counter() - t0
loaded = status()
gen.eos = set()
gen.generate(json.loads(sys.argv[2]), SamplingParams(max_new_tokens=1))
print(json.dumps({"load_s": load, "first_token_s": time.perf_counter() - t0, "rss_loaded_mb": loaded["VmRSS"],
                  "peak_mb": status()["VmHWM"]}))
"""

ORT = STATUS + """
import json, sys, time
t0 = time.perf_counter()
import onnxruntime as ort
path, how = sys.argv[1], sys.argv[2]
options = ort.SessionOptions()
options.intra_op_num_threads = 2
if how.endswith("noprepack"):
    options.add_session_config_entry("session.disable_prepacking", "1")
import os
options.add_session_config_entry("session.model_external_initializers_file_folder_path", os.path.dirname(path))
model = open(path, "rb").read() if how == "bytes" else path
session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
del model
load = time.perf_counter() - t0
print(json.dumps({"load_s": load, "rss_loaded_mb": status()["VmRSS"], "peak_mb": status()["VmHWM"]}))
"""

LLAMA = STATUS + """
import json, sys, time
t0 = time.perf_counter()
import llama_cpp
model = llama_cpp.Llama(sys.argv[1], n_ctx=2048, n_threads=2, verbose=False)
load = time.perf_counter() - t0
loaded = status()
model.eval(json.loads(sys.argv[2]))
print(json.dumps({"load_s": load, "first_token_s": time.perf_counter() - t0, "rss_loaded_mb": loaded["VmRSS"],
                  "peak_mb": status()["VmHWM"]}))
"""

GENAI = STATUS + """
import json, sys, time
t0 = time.perf_counter()
import onnxruntime_genai as og
model = og.Model(sys.argv[1])
load = time.perf_counter() - t0
loaded = status()
params = og.GeneratorParams(model)
params.set_search_options(max_length=17, do_sample=False)
generator = og.Generator(model, params)
generator.append_tokens(json.loads(sys.argv[2]))
print(json.dumps({"load_s": load, "first_token_s": time.perf_counter() - t0, "rss_loaded_mb": loaded["VmRSS"],
                  "peak_mb": status()["VmHWM"]}))
"""


def run(command: list[str]) -> dict:
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"{command[0]} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gguf", type=Path, help="the GGUF the bundle was exported from (llama.cpp's side)")
    parser.add_argument("--llama-python", help="python of an environment with llama-cpp-python")
    parser.add_argument("--genai-python", help="python of an environment with onnxruntime-genai")
    parser.add_argument("--genai-folder", type=Path, help="onnxruntime-genai's export of the same model")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    manifest = json.loads((args.bundle / "manifest.json").read_text())
    graph = args.bundle / manifest["graphs"][manifest["decoder"]["graph"]]["file"]
    weights = sum(p.stat().st_size for p in args.bundle.iterdir() if p.suffix in (".onnx", ".data"))
    prompt = json.dumps(PROMPT)
    sides = {"edgert": [sys.executable, "-c", EDGERT, str(args.bundle), prompt],
             "ort-path": [sys.executable, "-c", ORT, str(graph), "path"],
             "ort-bytes": [sys.executable, "-c", ORT, str(graph), "bytes"],
             "ort-path-noprepack": [sys.executable, "-c", ORT, str(graph), "path-noprepack"]}
    if args.llama_python and args.gguf:
        sides["llama.cpp"] = [args.llama_python, "-c", LLAMA, str(args.gguf), prompt]
    if args.genai_python and args.genai_folder:
        sides["genai"] = [args.genai_python, "-c", GENAI, str(args.genai_folder), prompt]
    rounds: dict[str, list[dict]] = {side: [] for side in sides}
    for _ in range(args.rounds):  # interleaved: a slow spell of the machine hits every side alike
        for side, command in sides.items():
            rounds[side].append(run(command))
    report = {"bundle": str(args.bundle), "graph_and_weights_mb": weights / 2**20, "rounds": args.rounds, "sides": {}}
    print(f"{args.bundle}: graph files {weights / 2**20:.0f} MiB; medians of {args.rounds} fresh processes")
    print(f"{'side':<20} {'peak MiB':>9} {'loaded MiB':>11} {'load s':>7} {'first token s':>14}")
    for side, results in rounds.items():
        median = {key: statistics.median([r[key] for r in results]) for key in results[0]}
        report["sides"][side] = median
        print(f"{side:<20} {median['peak_mb']:>9.0f} {median['rss_loaded_mb']:>11.0f} {median['load_s']:>7.2f} "
              f"{median.get('first_token_s', float('nan')):>14.2f}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
