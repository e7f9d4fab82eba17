"""Assembly: turns -> segments, the one place that decides the sequence a model sees.

Each turn becomes `{role_start}{role}{role_end}` (a marker) then its content, with the eos token right
after each bot content and no separators, as the reference trainer really does (its README's
multi-line picture is not what it trains on). `text` records are their content plus eos. Markers and
content are separate segments because they are tokenized separately: then a mask boundary is always a
token boundary, whatever the tokenizer would merge across it.

Loss mask (before the shift): 1 on bot content and its eos, and on every token in SST mode and of
`text` records; 0 on markers, system and human content.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mft_trainer.config import DataConfig
from mft_trainer.data.records import TEXT_ROLE, Turn, chat_turns

SegmentKind = Literal["marker", "content", "eos"]

# Full-width ASCII forms (U+FF01..U+FF5E) to ASCII, plus the CJK punctuation the reference converts.
PUNCTUATION = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)} | {
    ord("。"): ".",
    ord("【"): "[",
    ord("】"): "]",
    0x3000: " ",
    0x00A0: " ",
    0x202F: " ",
}


@dataclass(frozen=True)
class Segment:
    kind: SegmentKind
    text: str  # empty for eos: its text depends on the tokenizer
    trainable: bool  # the loss-mask value of its tokens


@dataclass(frozen=True)
class AssemblyStyle:
    role_start: str = "<|role_start|>"
    role_end: str = "<|role_end|>"
    normalize_punctuation: bool = False
    train_on_all: bool = False  # SST: every token is a target

    @classmethod
    def from_config(cls, data: DataConfig, mode: str) -> AssemblyStyle:
        return cls(data.role_start, data.role_end, data.normalize_punctuation, data_mode(mode) == "sst")

    def marker(self, role: str) -> str:
        return f"{self.role_start}{role}{self.role_end}"

    def segments(self, turns: list[Turn]) -> list[Segment]:
        out: list[Segment] = []
        for turn in turns:
            content = self._clean(turn.content)
            if turn.role == TEXT_ROLE:
                out += [Segment("content", content, True), Segment("eos", "", True)]
                continue
            bot = turn.role == "bot"
            out += [
                Segment("marker", self.marker(turn.role), self.train_on_all),
                Segment("content", content, bot or self.train_on_all),
            ]
            if bot:
                out.append(Segment("eos", "", True))
        return out

    def prompt_segments(self, turns: list[Turn]) -> list[Segment]:
        """A conversation that ends on a human turn, followed by the bot marker the model answers after."""
        if not turns or turns[-1].role != "human":
            raise ValueError("a prompt must end with a human turn")
        return self.segments(turns) + [Segment("marker", self.marker("bot"), False)]

    def _clean(self, content: str) -> str:
        # Off by default: converting full-width punctuation also rewrites code and string literals.
        return content.translate(PUNCTUATION) if self.normalize_punctuation else content


def data_mode(mode: str) -> Literal["sst", "sft"]:
    """The trainer modes sst/sft/lora as the data pipeline sees them: LoRA trains on SFT data."""
    return "sst" if mode == "sst" else "sft"


def render(segments: list[Segment], eos_text: str | None) -> str:
    if eos_text is None and any(s.kind == "eos" for s in segments):
        raise ValueError("an eos token text is needed to render bot turns; pass eos_token")
    return "".join(eos_text if s.kind == "eos" else s.text for s in segments)  # type: ignore[misc]


def prompt_turns(turns: list[dict] | str, system: str | None) -> list[Turn]:
    """The inference prompt's turns: a question string or chat_rounds-style dicts, an optional system first."""
    history = [Turn("human", turns)] if isinstance(turns, str) else chat_turns(turns)
    return ([Turn("system", system)] if system else []) + history


def build_prompt(
    turns: list[dict] | str,
    system: str | None = None,
    data_config: DataConfig | None = None,
    eos_token: str | None = None,
) -> str:
    """The generation prompt as text: `<|role_start|>human<|role_end|>{question}<|role_start|>bot<|role_end|>`,
    with an optional system turn first. Histories with bot turns need `eos_token` (the tokenizer's eos text).
    To get token ids exactly as training tokenizes them, use `encode_prompt`."""
    style = AssemblyStyle.from_config(data_config or DataConfig(), "sft")
    return render(style.prompt_segments(prompt_turns(turns, system)), eos_token)
