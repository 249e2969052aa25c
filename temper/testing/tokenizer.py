"""An offline byte-level BPE tokenizer for tiny test models, shaped like Qwen's.

Design (all fixed, so ids are stable for a given `tokenizers` version):

- 256 byte tokens plus BPE merges trained on `CORPUS` (built in, ~6 KB) up to `BPE_VOCAB_SIZE`
  entries, so ids ``0 .. BPE_VOCAB_SIZE-1`` are ordinary tokens and common words are single tokens.
- Qwen2's pre-tokenizer regex (digits split one per token, so ``12+7=19`` is 7 tokens) and byte-level
  encoding with no normalizer: every string, including unicode and odd whitespace, round-trips through
  encode/decode exactly.
- `SPECIAL_TOKENS` appended after the BPE vocab in a fixed order. The first three are special
  (dropped by ``skip_special_tokens``); the tool/think markers are added tokens that stay in decoded
  text, as in Qwen3, so tool-call and reasoning parsers see them.
- eos = ``<|im_end|>``, pad = ``<|endoftext|>``, no bos: Qwen's chat settings.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from temper.testing.chat_template import CHAT_TEMPLATE

BPE_VOCAB_SIZE = 1000
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
# (content, special): special tokens are dropped by skip_special_tokens, the others are kept.
SPECIAL_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)
TOKENIZER_SIZE = BPE_VOCAB_SIZE + len(SPECIAL_TOKENS)

# Qwen2's pre-tokenizer pattern (tokenizer.json of Qwen2.5 / Qwen3).
_SPLIT_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

_PROSE = """\
The quick brown fox jumps over the lazy dog. A language model reads a prompt, one token at a time,
and writes an answer. Reinforcement learning from verifiable rewards scores each answer: a correct
final answer earns a reward of one, a wrong one earns zero. The policy is then trained to make the
rewarded answers more likely and the others less likely, while a penalty keeps it close to the
reference model. We sample a group of responses for every prompt, compute the advantage of each
response relative to its group, and take a few optimizer steps before the weights are sent to the
inference engine again. Let's think step by step. First, add the two numbers; then check the result.
If the question asks for the weather, call the tool with the city name and wait for its response.
The user said: "What is the capital of France?" The assistant answered: "Paris is the capital."
Please explain your reasoning, show your work, and put the final answer in a box.
Numbers, dates and units: 3.14159, 2024-06-01, 42 km/h, 100%, $19.99, 7 apples and 12 oranges.
Questions? Answers! Lists; items: one, two, three. (Parentheses) [brackets] {braces} <angles>.
Unicode text also works: café, naïve, résumé, Größe, São Paulo, Ελληνικά, русский, 中文, 日本語, 한국어, 🙂.
Once upon a time, in a small village between the mountains and the sea, there lived a curious girl
who wanted to understand how everything worked. Every morning she walked to the harbour, watched the
fishermen repair their nets, and asked them questions about the wind, the tides and the stars. They
told her stories about distant islands, storms that lasted for weeks, and whales singing at night.
When she grew older, she built a telescope from old glass and copper pipes, measured the movement of
the planets, and wrote everything down in a thick notebook that her grandfather had given her.
Today, computers process enormous amounts of information quickly. Programmers write functions,
classes and modules; they debug errors, optimize performance, and document their interfaces.
Scientists collect data, design experiments, analyze results, and publish papers that others review.
"""

_MARKUP = """\
system user assistant tool function name arguments parameters properties required description type
object string number integer boolean array enum result content role tool_calls reasoning_content
{"type": "function", "function": {"name": "get_weather", "description": "Get the weather for a city",
"parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
{"name": "calculator", "arguments": {"expression": "12+7"}}
{"temperature": 21, "unit": "celsius", "condition": "sunny"}
def add(a: int, b: int) -> int:
    return a + b

for i in range(10):
    print(f"step {i}: loss={loss:.4f}")
"""


def _arithmetic_lines() -> str:
    """Deterministic arithmetic drills, so '+', '=', '*' and newlines appear in realistic runs."""
    lines = [f"{a}+{b}={a + b}, {a}*{b}={a * b}, {a + b}-{b}={a}" for a in range(0, 30, 3) for b in range(1, 20, 4)]
    return "\n".join(lines)


def _chat_lines() -> str:
    """Role names and short turns as they appear in rendered chats, so role headers are single tokens."""
    turns = [f"system\nuser\nWhat is {a}+{a}?\nassistant\nThe answer is {2 * a}.\ntool\n" for a in range(12)]
    return "".join(turns)


CORPUS: tuple[str, ...] = (_PROSE, _MARKUP, _arithmetic_lines(), _chat_lines())


def build_backend_tokenizer() -> Tokenizer:
    """Train the byte-level BPE on `CORPUS` and append `SPECIAL_TOKENS`.

    Returns a `tokenizers.Tokenizer` with exactly `TOKENIZER_SIZE` ids. Deterministic; takes a few ms.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    if tok.get_vocab_size() != BPE_VOCAB_SIZE:
        raise RuntimeError(
            f"temper.testing.tokenizer: BPE training gave {tok.get_vocab_size()} tokens, expected "
            f"{BPE_VOCAB_SIZE}; CORPUS is too small for BPE_VOCAB_SIZE"
        )
    for content, special in SPECIAL_TOKENS:
        added = AddedToken(content, special=special, normalized=False)
        # add_special_tokens/add_tokens each append one id, so the order of SPECIAL_TOKENS is the id order.
        (tok.add_special_tokens if special else tok.add_tokens)([added])
    return tok


def build_tokenizer(model_max_length: int = 4096) -> PreTrainedTokenizerFast:
    """A `transformers` fast tokenizer over `build_backend_tokenizer()`, with the ChatML template.

    eos is ``<|im_end|>``, pad is ``<|endoftext|>``, there is no bos, and decoding does not clean up
    spaces (so decode(encode(s)) == s).
    """
    return PreTrainedTokenizerFast(
        tokenizer_object=build_backend_tokenizer(),
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        chat_template=CHAT_TEMPLATE,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
        # Without this, transformers 4.x returns token_type_ids, which generate() rejects.
        model_input_names=["input_ids", "attention_mask"],
    )


def special_token_ids() -> dict[str, int]:
    """The id of each of `SPECIAL_TOKENS`, without building anything."""
    return {content: BPE_VOCAB_SIZE + i for i, (content, _) in enumerate(SPECIAL_TOKENS)}


def save_tokenizer(out_dir: str | Path, model_max_length: int = 4096) -> PreTrainedTokenizerFast:
    """Write tokenizer.json, tokenizer_config.json (with ``chat_template``) and special_tokens_map.json.

    The chat template is stored inside tokenizer_config.json, where every transformers version and
    serving engine looks for it. Returns the tokenizer that was saved.
    """
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(model_max_length)
    tokenizer.save_pretrained(out_dir, save_jinja_files=False)
    _make_portable(out_dir, tokenizer)
    return tokenizer


def _make_portable(out_dir: Path, tokenizer: PreTrainedTokenizerFast) -> None:
    """Make a folder written by transformers 5 loadable by transformers 4.x and older tools too."""
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    # transformers 5 writes "TokenizersBackend", a class 4.x lacks; both map this name to a fast tokenizer.
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    special_map = out_dir / "special_tokens_map.json"
    if not special_map.exists():  # transformers 5 no longer writes this legacy file
        special_map.write_text(json.dumps(tokenizer.special_tokens_map, indent=2) + "\n")
