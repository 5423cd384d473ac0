"""Runs inside onnxruntime-genai's own environment (never edgert's): times one greedy
generation of an onnxruntime-genai model folder and prints JSON. Used by bench_quantized_llm.py.

    python genai_worker.py MODEL_DIR PROMPT_IDS_JSON NEW_TOKENS
"""

import json
import sys
import time

STARTED = time.perf_counter()
import onnxruntime_genai as og  # noqa: E402


def main() -> None:
    folder, prompt, new = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    model = og.Model(folder)
    load = time.perf_counter() - STARTED  # import and model load, as the other workers measure it
    for warm in (True, False):
        ids = prompt[:16] if warm else prompt
        steps = 4 if warm else new
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + steps, min_length=len(ids) + steps, do_sample=False)
        generator = og.Generator(model, params)
        t0 = time.perf_counter()
        generator.append_tokens(ids)  # the prefill: the prompt's logits
        prefill = time.perf_counter() - t0
        stamps = []
        while not generator.is_done():
            generator.generate_next_token()
            stamps.append(time.perf_counter())
    tokens = [int(t) for t in generator.get_sequence(0)][len(prompt):]
    rss = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024
    print(json.dumps({"load_s": load, "prefill_s": prefill, "decode_tokens_per_s": (len(stamps) - 1) / (stamps[-1] - stamps[0]),
                      "tokens": tokens, "peak_rss_mb": rss, "version": og.__version__}))


if __name__ == "__main__":
    main()
