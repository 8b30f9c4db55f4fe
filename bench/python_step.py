"""The overhead of driving training from Python: a gpt-s training step run by a loop written in Python against
the same step run by the library's trainer (the C++ loop of `ellipse train gpt`), alternating rounds of each on
the same model shape, batch and data, and comparing the median step times. With --attention-in-python, both
runs are the library's trainer, one with the built-in standard attention and one with the same attention
written in Python (examples/python/standard_attention.py): what a layer written in Python costs.

    python bench/python_step.py [--config gpt-s] [--rounds 3] [--steps 6] [--attention-in-python]
"""
import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import ellipse
from ellipse import models, nn


def text(characters: int) -> str:
    """A pseudo-random text of a Shakespeare-sized vocabulary (65 characters)."""
    rng = random.Random(0)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'-\n&$3"
    return "".join(rng.choice(alphabet) for _ in range(characters))


def cpp_step_times(path: Path, out: Path, config: str, steps: int, attention: str = "standard") -> list:
    """Seconds between consecutive steps of the library's trainer (the first step is warm-up)."""
    stamps = []
    models.train_gpt(str(path), str(out), config=config, attention=attention, steps=steps, eval_every=steps,
                     warmup=1, on_step=lambda step, loss, lr: stamps.append(time.perf_counter()))
    return [b - a for a, b in zip(stamps, stamps[1:])]


def python_step_times(corpus: str, config_name: str, steps: int) -> list:
    tokenizer = models.CharTokenizer.from_text(corpus)
    train, _ = models.split_train_val(tokenizer.encode(corpus))
    config = models.gpt_preset(config_name, tokenizer.size)
    model = models.GPT(config, 0)
    model.train()
    optimizer = nn.AdamW(model.parameters(), lr=1e-3, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1)
    data = ellipse.Generator(0 ^ 0x5EEDDA7A)
    parameters = model.parameters()
    stamps = []
    for step in range(steps):
        optimizer.lr = nn.warmup_cosine_lr(step, 1, steps, 1e-3, 1e-4)
        optimizer.zero_grad()
        inputs, targets = models.sample_windows(train, config.batch, config.seq_len, data)
        loss = ellipse.cross_entropy(model(inputs), targets)
        loss.item()
        loss.backward()
        nn.clip_grad_norm(parameters, 1.0)
        optimizer.step()
        stamps.append(time.perf_counter())
    return [b - a for a, b in zip(stamps, stamps[1:])]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="gpt-s")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--attention-in-python", action="store_true",
                        help="time the trainer with standard attention written in Python against the built-in one")
    args = parser.parse_args()
    if args.attention_in_python:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "python"))
        import standard_attention

        python_kind = standard_attention.register()
    corpus = text(40_000)
    cpp, python = [], []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "text.txt"
        path.write_text(corpus)
        for round_ in range(args.rounds):
            cpp += cpp_step_times(path, Path(folder) / f"run{round_}", args.config, args.steps)
            if args.attention_in_python:
                python += cpp_step_times(path, Path(folder) / f"python{round_}", args.config, args.steps, python_kind)
            else:
                python += python_step_times(corpus, args.config, args.steps)
    cpp_ms, python_ms = 1e3 * statistics.median(cpp), 1e3 * statistics.median(python)
    if args.attention_in_python:
        print(f"{args.config} training step by the library's trainer, median of {len(cpp)}: attention built in "
              f"{cpp_ms:.1f} ms, written in Python {python_ms:.1f} ms, Python/built-in {python_ms / cpp_ms:.3f}")
    else:
        print(f"{args.config} training step, median of {len(cpp)}: C++ loop {cpp_ms:.1f} ms, Python loop "
              f"{python_ms:.1f} ms, Python/C++ {python_ms / cpp_ms:.3f}")


if __name__ == "__main__":
    main()
