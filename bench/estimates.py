"""How far the gateway's token estimates are from a real tokenizer, on English, Chinese and code.

No tokenizer can be downloaded at run time here, but one ships inside a PyPI package: Alibaba's
DashScope SDK bundles Qwen's BPE table (``qwen.tiktoken``, 151k tokens, a vocabulary of the same
family as today's open Chinese/English models) and reads it with tiktoken. The benchmark
installs both into a throwaway venv (``var/bench/tokenizer-venv``) and runs this file there;
``gateway/serving/tokens.py`` is loaded from its path (it needs nothing but the standard
library), so the figures are for the code as it is.

The corpus is this repository: the English and Chinese docs pages and the project's Python
source, cut into pieces of about 2,000 characters, plus each English piece followed by a
Chinese one (mixed). For each piece: estimate / real tokens, for the upper estimate (what a
reservation holds) and the lower bound (what a context refusal needs). The upper one must
not fall below 1 and the lower one must not rise above 1 for the promises to hold.
"""

from __future__ import annotations

import importlib.util
import statistics
import subprocess
import sys
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
VENV = BASE_DIR / "var" / "bench" / "tokenizer-venv"
REQUIREMENTS = ["dashscope==2.0.2", "tiktoken==0.14.0"]
PIECE = 2000


def _pieces(paths: list[Path]) -> list[str]:
    pieces = []
    for path in sorted(paths):
        text = path.read_text(encoding="utf-8")
        pieces.extend(text[i : i + PIECE] for i in range(0, len(text) - PIECE // 2, PIECE))
    return pieces


def corpus() -> dict[str, list[str]]:
    english = _pieces(list((BASE_DIR / "docs" / "content" / "en").glob("*.md")))
    chinese = _pieces(list((BASE_DIR / "docs" / "content" / "zh-hans").glob("*.md")))
    code = _pieces(
        [
            p
            for app in ("gateway", "usage", "keys", "accounts", "alerts")
            for p in (BASE_DIR / app).rglob("*.py")
            if "migrations" not in p.parts
        ]
    )
    mixed = [e + "\n" + c for e, c in zip(english, chinese, strict=False)]
    return {"English": english, "Chinese": chinese, "code": code, "mixed": mixed}


def measure() -> None:
    """Runs inside the tokenizer venv."""
    from dashscope import get_tokenizer

    spec = importlib.util.spec_from_file_location(
        "tokens", BASE_DIR / "gateway" / "serving" / "tokens.py"
    )
    tokens = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tokens)
    qwen = get_tokenizer("qwen-7b-chat")
    print("token estimates against Qwen's tokenizer (estimate / real tokens per ~2,000 chars):")
    print(
        f"  {'corpus':<8} {'pieces':>6}  {'upper: median':>14} {'min':>6} {'max':>6}"
        f"  {'lower: median':>14} {'min':>6} {'max':>6}"
    )
    for name, pieces in corpus().items():
        upper, lower = [], []
        for text in pieces:
            real = len(qwen.encode(text))
            upper.append(tokens.estimate_text_tokens(text) / real)
            lower.append(tokens.estimate_text_tokens_min(text) / real)
        print(
            f"  {name:<8} {len(pieces):>6}  {statistics.median(upper):>14.2f} {min(upper):>6.2f}"
            f" {max(upper):>6.2f}  {statistics.median(lower):>14.2f} {min(lower):>6.2f}"
            f" {max(lower):>6.2f}"
        )


def main() -> None:
    python = VENV / "bin" / "python"
    marker = VENV / ".installed"
    if not marker.exists():
        try:
            if not python.exists():
                subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
            subprocess.run(
                [str(python), "-m", "pip", "install", "--quiet", *REQUIREMENTS],
                check=True,
                timeout=600,
            )
        except (subprocess.SubprocessError, OSError) as exc:
            print(f"token estimates skipped: the tokenizer could not be installed ({exc})")
            return
        marker.touch()
    subprocess.run([str(python), __file__, "--measure"], check=False)


if __name__ == "__main__":
    measure() if "--measure" in sys.argv else main()
