"""TeSTra: the window computation equals the official batch forward (restated on torch.nn's own
transformer, which has the official layers' exact parameters), the constant-time streaming update
equals recomputing the attention over the kept memory for both kernels, the official layout loads
at paper size, detection is real and holds at int8, bad input is refused."""

import json
from bisect import bisect_right

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgert.exporters.synthetic import untrimmed_stream
from edgert.plugins.testra import state_shapes
from edgert.plugins.testra.model import TeSTra, TeSTraStep
from edgert.runtime import load
from edgert.runtime.metrics import perframe_metrics, softmax

from conftest import assert_user_error, edgert
from test_official_layouts import official_state

# a tiny TeSTra whose long memory fills and slides within a short stream: 6 samples every 3
# chunks, a work window of 5 (pops start at chunk 5 - 1 + 3 * 7 = 25)
TINY = dict(feature_dim=12, d_model=16, heads=4, ff=24, long=6, rate=3, work=5, compressed=4, compressed2=6,
            num_classes=5)


def cli_opts(opts: dict) -> list[str]:
    return [a for k, v in opts.items() for a in ("--opt", f"{k}={v}")]


def tiny(kernel: str, seed: int = 0) -> TeSTra:
    torch.manual_seed(seed)
    o = TINY
    model = TeSTra(o["feature_dim"], o["num_classes"], o["d_model"], o["heads"], o["ff"], o["long"], o["work"],
                   (o["compressed"], o["compressed2"]), 2, 2, kernel, 0.8)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


def official_long_memory(work_start: int, n: int, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """The official LSTRBatchInferenceDataLayer's long-memory indices (``uniform_sampler``) and
    ``memory_key_padding_mask`` for a work window starting at ``work_start``."""
    start, end = work_start - n * rate, work_start - 1
    if start < 0:
        start = (end + 1) % rate
    indices = np.arange(start, end + 1)[::rate]
    if n - len(indices) > 0:
        indices = np.concatenate((np.zeros(n - len(indices)), indices))
    indices = np.sort(indices).astype(np.int64).clip(0)
    mask = np.zeros(n, np.float32)
    last_zero = bisect_right(indices, 0) - 1
    if last_zero > 0:
        mask[:last_zero] = float("-inf")
    return indices, mask


def official_window(state: dict, heads: int, alpha: float, long_x, mask, work_x):
    """``LSTR.forward`` of the official code in eval mode, THUMOS TeSTra config (no anticipation,
    long memory without positions, LONG_MEMORY_INCLUDE_WORK), restated on torch.nn's post-norm
    TransformerDecoder (the official layer's parameters and math), sequence first as the official."""
    dtype = long_x.dtype
    d = state["feature_head_long.input_linear.0.weight"].shape[0]

    def head(name, x):
        return F.relu(F.linear(x, state[f"feature_head_{name}.input_linear.0.weight"],
                               state[f"feature_head_{name}.input_linear.0.bias"]))

    def decoder(prefix):
        layers = len({k[len(prefix + ".layers."):].split(".")[0] for k in state if k.startswith(prefix + ".layers.")})
        ff = state[f"{prefix}.layers.0.linear1.weight"].shape[0]
        module = nn.TransformerDecoder(nn.TransformerDecoderLayer(d, heads, ff, dropout=0.0), layers,
                                       norm=nn.LayerNorm(d)).to(dtype)
        module.load_state_dict({k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")})
        return module.eval()

    b = long_x.shape[0]
    long_memories = head("long", long_x).transpose(0, 1)                      # T, B, C
    n = long_memories.shape[0]
    queries = [state[f"enc_queries.{i}.weight"].unsqueeze(1).repeat(1, b, 1) for i in (0, 1)]
    decay = None
    if alpha != 1.0:   # the official DotProductAttention: log(vander([alpha] * heads, N) + 1e-10)
        decay = torch.log(torch.vander(torch.tensor([alpha]), N=n)[0] + 1e-10).to(dtype)
        decay = decay.expand(queries[0].shape[0], n)
    memory = decoder("enc_modules.0")(queries[0], long_memories, memory_mask=decay, memory_key_padding_mask=mask)
    memory = decoder("enc_modules.1")(queries[1], memory)
    work = head("work", work_x).transpose(0, 1)
    work = work + state["pos_encoding.pe"][:work.shape[0]].to(dtype)
    causal = torch.full((work.shape[0],) * 2, float("-inf"), dtype=dtype).triu(1)
    extended = torch.cat((memory, work), dim=0)
    out = decoder("dec_modules")(work, extended, tgt_mask=causal, memory_mask=F.pad(causal, (memory.shape[0], 0)))
    return F.linear(out, state["classifier.weight"], state["classifier.bias"]).transpose(0, 1)


def per_frame(window, features: np.ndarray, n: int, rate: int, work: int, frames=None) -> np.ndarray:
    """The official batch inference's per-frame scores: the first window gives frames 0..work-1,
    every later window its last frame."""
    x = torch.from_numpy(features)
    out = []
    for t in (range(len(features)) if frames is None else frames):
        work_start = max(t - work + 1, 0)
        indices, mask = official_long_memory(work_start, n, rate)
        with torch.no_grad():
            scores = window(x[indices][None], torch.from_numpy(mask).to(x.dtype)[None], x[work_start:work_start + work][None])
        out.append(scores[0, t - work_start].numpy())
    return np.stack(out)


def torch_stream(step: TeSTraStep, features: np.ndarray, opts: dict) -> np.ndarray:
    state = [torch.zeros((1, *shape), dtype=torch.int64 if name == "step" else torch.float32)
             for name, shape in state_shapes(opts).items()]
    out = []
    with torch.no_grad():
        for f in torch.from_numpy(features):
            scores, *state = step(f[None], *state)
            out.append(scores[0].numpy())
    return np.stack(out)


def bundle_stream(bundle, features: np.ndarray) -> np.ndarray:
    session = load(bundle).stream()
    return np.stack([session.step({"features": f[None]})["scores"][0] for f in features])


@pytest.mark.parametrize("kernel", ["box", "laplace"])
def test_window_equals_the_official_batch_forward(kernel):
    model = tiny(kernel)
    state = model.state_dict()
    features = np.random.default_rng(3).standard_normal((60, TINY["feature_dim"])).astype(np.float32)
    o = TINY
    ours = per_frame(model, features, o["long"], o["rate"], o["work"])
    official = per_frame(lambda *a: official_window(state, o["heads"], model.alpha, *a), features, o["long"],
                         o["rate"], o["work"])
    np.testing.assert_allclose(ours, official, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", ["box", "laplace"])
def test_constant_time_update_equals_recomputing_the_memory(kernel, tmp_path):
    """Over 200 chunks (the long memory fills at chunk 25 and slides from then on): the step
    module, and the exported step graph, give the batch computation's per-frame scores; a reset
    starts the stream again."""
    model = tiny(kernel)
    features = np.random.default_rng(4).standard_normal((200, TINY["feature_dim"])).astype(np.float32)
    o = TINY
    expected = per_frame(model, features, o["long"], o["rate"], o["work"])
    np.testing.assert_allclose(torch_stream(TeSTraStep(model, o["rate"]), features, o), expected, rtol=1e-5, atol=1e-5)

    torch.save({"epoch": 3, "model_state_dict": model.state_dict(), "optimizer_state_dict": {}}, tmp_path / "m.pth")
    out = tmp_path / "b"
    opts = {k: v for k, v in o.items() if k in ("heads", "long", "rate", "work")}
    result = edgert("export", "testra", "--out", out, "--checkpoint", tmp_path / "m.pth", *cli_opts(opts),
                    "--opt", f"kernel={kernel}", "--opt", "decay=0.8")
    assert result.returncode == 0, result.stderr
    streamed = bundle_stream(out, features)
    np.testing.assert_allclose(streamed, expected, rtol=1e-5, atol=1e-5)
    session = load(out).stream()
    for f in features[:7]:
        session.step({"features": f[None]})
    session.reset()
    again = np.stack([session.step({"features": f[None]})["scores"][0] for f in features[:3]])
    np.testing.assert_array_equal(again, streamed[:3])


@pytest.mark.parametrize("kernel", ["box", "laplace"])
def test_official_checkpoint_at_paper_size(kernel, tmp_path):
    """The released THUMOS'14 layout (random tensors under its exact keys and shapes): export
    reads the sizes off it, and the step graph over 200 chunks gives the official batch
    computation's scores (float64) within 1e-5 — checked at every 20th chunk and the first
    window's, where the memory is still filling."""
    state = official_state("testra_thumos_official_keys.txt")
    torch.save({"epoch": 25, "model_state_dict": state, "optimizer_state_dict": {}}, tmp_path / "epoch-25.pth")
    out = tmp_path / "testra"
    result = edgert("export", "testra", "--out", out, "--checkpoint", tmp_path / "epoch-25.pth",
                    "--opt", f"kernel={kernel}")
    assert result.returncode == 0, result.stderr
    options = json.loads((out / "manifest.json").read_text())["model"]["options"]
    assert {k: options[k] for k in ("feature_dim", "d_model", "ff", "num_classes", "compressed", "compressed2",
                                    "enc_layers", "dec_layers")} == \
        {"feature_dim": 3072, "d_model": 1024, "ff": 1024, "num_classes": 22, "compressed": 16, "compressed2": 32,
         "enc_layers": 2, "dec_layers": 2}
    features = np.random.default_rng(5).standard_normal((200, 3072)).astype(np.float32)
    frames = [0, 15, 31, *range(39, 200, 20)]
    state64 = {k: v.double() for k, v in state.items()}
    expected = per_frame(lambda *a: official_window(state64, 16, 0.97 if kernel == "laplace" else 1.0, *a),
                         features.astype(np.float64), 512, 4, 32, frames)
    got = bundle_stream(out, features)[frames].astype(np.float64)
    np.testing.assert_allclose(softmax(got), softmax(expected), rtol=1e-5, atol=1e-7)


def test_bad_checkpoints_and_options(tmp_path):
    model = tiny("box")
    torch.save({"model_state_dict": model.state_dict()}, tmp_path / "m.pth")
    opts = cli_opts({k: v for k, v in TINY.items() if k in ("heads", "long", "rate", "work")})
    assert_user_error(edgert("export", "testra", "--out", tmp_path / "x", "--checkpoint", tmp_path / "m.pth", *opts,
                             "--opt", "num_classes=9"), "num_classes=9", "classifier.weight is [5, 16]")
    assert_user_error(edgert("export", "testra", "--out", tmp_path / "y", "--checkpoint", tmp_path / "m.pth", *opts,
                             "--opt", "compressed=8"), "compressed=8", "enc_queries.0.weight is [4, 16]")
    assert_user_error(edgert("export", "testra", "--out", tmp_path / "z", "--checkpoint", tmp_path / "m.pth",
                             "--opt", "heads=5"), "d_model=16 is not divisible by heads=5", "feature_head_long.input_linear.0.weight is [16, 12]")
    assert_user_error(edgert("export", "testra", "--out", tmp_path / "w", "--opt", "kernel=gauss"),
                      "--opt kernel=gauss: expected one of ['box', 'laplace']")
    torch.manual_seed(0)
    from edgert.plugins.miniroad.model import MiniROAD

    torch.save(MiniROAD(12, 5, 16, 16).state_dict(), tmp_path / "miniroad.pth")
    assert_user_error(edgert("export", "testra", "--out", tmp_path / "v", "--checkpoint", tmp_path / "miniroad.pth",
                             *opts), "checkpoint does not fit the model", "missing keys: feature_head_long")
    assert not any((tmp_path / name).exists() for name in "xyzwv")

    out = tmp_path / "b"
    assert edgert("export", "testra", "--out", out, *cli_opts(TINY)).returncode == 0
    np.save(tmp_path / "wide.npy", np.zeros((5, 20), np.float32))
    assert_user_error(edgert("run", out, "--input", tmp_path / "wide.npy", "--stream"),
                      "feature dimension 20, the bundle expects 12")


def _train(model: TeSTra, streams, steps: int, rng, n: int, rate: int, work: int) -> TeSTra:
    """TeSTra's training in short (the official LSTR trainer): random work windows with their long
    memory sampled as at inference, cross entropy on every work position."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(steps):
        longs, masks, works, targets = [], [], [], []
        for _ in range(8):
            features, labels = streams[int(rng.integers(len(streams)))]
            start = int(rng.integers(0, len(labels) - work))
            indices, mask = official_long_memory(start, n, rate)
            longs.append(features[indices])
            masks.append(mask)
            works.append(features[start:start + work])
            targets.append(labels[start:start + work])
        scores = model(*(torch.from_numpy(np.stack(a)) for a in (longs, masks, works)))
        loss = F.cross_entropy(scores.reshape(-1, scores.shape[-1]), torch.from_numpy(np.stack(targets)).reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_detection_is_real_and_holds_at_int8(tmp_path):
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    num_classes, dim, n, rate, work = 4, 32, 16, 4, 8
    streams = [untrimmed_stream(rng, 400, num_classes, dim) for _ in range(6)]
    model = _train(TeSTra(dim, num_classes, 32, 4, 64, n, work, (8, 8), 1, 1, "laplace", 0.9), streams, 200, rng,
                   n, rate, work)
    torch.save({"model_state_dict": model.state_dict()}, tmp_path / "model.pth")
    opts = ["--opt", "heads=4", "--opt", f"long={n}", "--opt", f"rate={rate}", "--opt", f"work={work}",
            "--opt", "kernel=laplace", "--opt", "decay=0.9"]
    out = tmp_path / "bundle"
    result = edgert("export", "testra", "--out", out, "--checkpoint", tmp_path / "model.pth", *opts)
    assert result.returncode == 0, result.stderr

    features, labels = untrimmed_stream(np.random.default_rng(99), 600, num_classes, dim)
    np.save(tmp_path / "features.npy", features)
    np.save(tmp_path / "labels.npy", labels)
    streamed = perframe_metrics(softmax(bundle_stream(out, features)), labels)
    chance = np.mean([np.mean(labels == c) for c in range(1, num_classes)])
    assert streamed.map > max(0.6, 3 * chance), (streamed.map, chance)
    cli = edgert("eval", out, "--features", tmp_path / "features.npy", "--labels", tmp_path / "labels.npy")
    assert cli.returncode == 0 and f"mAP  {streamed.map * 100:.2f}" in cli.stdout, cli.stderr

    calibration = tmp_path / "calibration"
    calibration.mkdir()
    for i, (stream, _) in enumerate(streams[:4]):
        np.save(calibration / f"stream{i}.npy", stream[:120])
    int8 = tmp_path / "int8"
    result = edgert("export", "testra", "--out", int8, "--checkpoint", tmp_path / "model.pth", *opts,
                    "--precision", "int8", "--calibration", calibration)
    assert result.returncode == 0, result.stderr
    accuracy = json.loads((int8 / "manifest.json").read_text())["quantization"]["main"]["accuracy"]
    assert accuracy["compared"] == 120 and accuracy["decisive_agreement"] >= 0.98, accuracy
    assert perframe_metrics(softmax(bundle_stream(int8, features)), labels).map > streamed.map - 0.03


def test_fp16_follows_fp32(tmp_path):
    """fp16 weights and activations (the state and I/O stay fp32): over 600 chunks, the long
    memory sliding from chunk 25 on, the probabilities stay within 1e-2 of fp32's."""
    torch.save({"model_state_dict": tiny("laplace").state_dict()}, tmp_path / "m.pth")
    opts = cli_opts({k: v for k, v in TINY.items() if k in ("heads", "long", "rate", "work")})
    for precision in ("fp32", "fp16"):
        result = edgert("export", "testra", "--out", tmp_path / precision, "--checkpoint", tmp_path / "m.pth", *opts,
                        "--opt", "kernel=laplace", "--opt", "decay=0.8", "--precision", precision)
        assert result.returncode == 0, result.stderr
    features = np.random.default_rng(6).standard_normal((600, TINY["feature_dim"])).astype(np.float32)
    fp32, fp16 = (softmax(bundle_stream(tmp_path / p, features)) for p in ("fp32", "fp16"))
    assert np.abs(fp16 - fp32).max() < 1e-2
