"""The frozen text encoders: captions -> what the diffusion model is conditioned on.

T5 (STDiT, PixArt): token embeddings y (B, 1, L, C) and mask (B, L) for the cross-attention. CLIP (DiT, Latte): one
pooled embedding y (B, 1, 1, C). Classes (class-conditional DiT, Latte): prompts are class ids, y (B,) int64.

Open-Sora v1.0 uses T5 v1.1 XXL's encoder (C = 4096) with L = 120 tokens, after cleaning every caption the way
DeepFloyd IF / PixArt did (clean_caption below): the released checkpoints saw only cleaned captions.

    text_encoder = build_text_encoder(dict(type="t5", from_pretrained="DeepFloyd/t5-v1_1-xxl", model_max_length=120))
    out = text_encoder.encode(["a cat playing piano"])  # dict(y=(1, 1, 120, 4096), mask=(1, 120))
    text_encoder.y_embedder = model.y_embedder          # then null(n) is the model's learned "no caption" embedding

from_pretrained=None builds a tiny random T5 over bytes (ByT5's tokenizer needs no files) for tests and the CPU demo.
"""
import html
import html.entities
import os
import re
import unicodedata
import urllib.parse
from html.parser import HTMLParser

import torch

from errors import DTYPES, pick

try:  # v1.0's caption cleaning libraries, optional (caption cleaning below)
    import ftfy
    from bs4 import BeautifulSoup
except ImportError:
    ftfy = BeautifulSoup = None

# ----------------------------------------------------------------------------- caption cleaning
# v1.0's T5 path always cleans (use_text_preprocessing is never turned off) and cleans TWICE: a second pass catches
# what the first one exposes. The rules, in v1.0's order, are behaviour, so they are kept as they are, quirks
# included: '+' becomes a space (URL unquoting), "www:" (not "www.") in the second URL rule, any "download" or
# "shipping" is dropped. Dims, ids and names like "jc6640" go too, and every caption is lower-cased.
# v1.0 calls BeautifulSoup(..., "html.parser").text and ftfy.fix_text. We call them too when both are installed
# (optional: `pip install ftfy beautifulsoup4`); without them html_text and fix_unicode below do the same by hand,
# equal to them on the hard cases of the tests (test_clean_caption_hard_cases_..), ftfy's mojibake repair aside.

def rules(*pairs):
    return [(re.compile(pattern), repl) for pattern, repl in pairs]


DOMAIN = r"[a-zA-Z0-9.\-]+[.](?:com|co|ru|net|org|edu|gov|it)[\w/-]*\b\/?(?!@)"
FILE_EXT = r"(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)"
BEFORE_HTML = rules(
    (r"<person>", "person"),
    (r"\b((?:https?:(?:\/{1,3}|[a-zA-Z0-9%])|" + DOMAIN + "))", ""),  # urls
    (r"\b((?:www:(?:\/{1,3}|[a-zA-Z0-9%])|" + DOMAIN + "))", ""),
)
AFTER_HTML = rules(
    (r"@[\w\d]+\b", ""),  # @nickname
    (r"[\u31c0-\u9fff]+", ""),  # CJK strokes .. CJK unified ideographs (v1.0 lists 7 adjacent ranges)
    (r"[\u002D\u058A\u05BE\u1400\u1806\u2010-\u2015\u2E17\u2E1A\u2E3A\u2E3B\u2E40\u301C\u3030\u30A0\uFE31\uFE32"
     r"\uFE58\uFE63\uFF0D]+", "-"),  # every dash
    (r"[`´«»“”¨]", '"'), (r"[‘’]", "'"),  # quotes
    (r"&quot;?", ""), (r"&amp", ""),
    (r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", " "),  # ip addresses
    (r"\d:\d\d\s+$", ""),  # article ids
    (r"\\n", " "),  # a literal backslash-n
    (r"#\d{1,3}\b", ""), (r"#\d{5,}\b", ""), (r"\b\d{6,}\b", ""),  # "#123", "#12345..", "123456.."
    (r"[\S]+\." + FILE_EXT, ""),  # file names
    (r"[\"']{2,}", '"'), (r"[.]{2,}", " "),
    (r"[#®•©™&@·º½¾¿¡§~)(\]\[}{|\\/*]+", " "),  # bad punctuation
    (r"\s+\.\s+", " "),
)
SEPARATOR = re.compile(r"[-_]")  # this-is-my-cute-cat: more than 3 separators become spaces
AFTER_FIX = rules(
    (r"\b[a-zA-Z]{1,3}\d{3,15}\b", ""), (r"\b[a-zA-Z]+\d+[a-zA-Z]+\b", ""), (r"\b\d+[a-zA-Z]+\d+\b", ""),  # ids
    (r"(worldwide\s+)?(free\s+)?shipping", ""), (r"(free\s)?download(\sfree)?", ""),
    (r"\bclick\b\s(?:for|on)\s\w+", ""), (r"\b" + FILE_EXT + r"(\simage[s]?)?", ""), (r"\bpage\s+\d+\b", ""),
    (r"\b\d*[a-zA-Z]+\d+[a-zA-Z]+\d+[a-zA-Z\d]*\b", " "),  # j2d1a2a...
    (r"\b\d+\.?\d*[xх×]\d+\.?\d*\b", ""),  # sizes: 1920x1080 (latin x, cyrillic х, ×)
    (r"\b\s+\:\s+", ": "), (r"(\D[,\./])\b", r"\1 "), (r"\s+", " "),
    (r"^[\"']([\w\W]+)[\"']$", r"\1"), (r"^['_,\-:;]", ""), (r"['_,\-:+]$", ""), (r"^\.\S+$", ""),
)


class TextOfHTML(HTMLParser):
    """What BeautifulSoup(text, "html.parser").text returns, without bs4: python's parser with entities left to us,
    resolved as bs4 resolves them. Its quirks are the parser's own: an unknown "&t;" loses its ';', and an '&' that
    ends the text goes ("AT&T" -> "att"); the text of script, style and template elements is dropped."""
    def __init__(self):
        super().__init__(convert_charrefs=False)
        self.parts, self.hidden = [], 0

    def handle_data(self, data):
        self.parts += [data] * (not self.hidden)

    def handle_starttag(self, tag, attrs):
        self.hidden += tag in HIDDEN

    def handle_endtag(self, tag):
        self.hidden = max(0, self.hidden - (tag in HIDDEN))

    def handle_entityref(self, name):  # "&lt" or "&lt;": a known entity is its character, the rest stays as written
        self.handle_data(html.entities.html5.get(name + ";", "&" + name))

    def handle_charref(self, name):  # "&#65;", "&#x41": HTML5's rules (cp1252 for 128-159); control characters kept
        self.handle_data(html.unescape(f"&#{name};") or chr(int(name[1:], 16) if name[0] in "xX" else int(name)))

    def unknown_decl(self, data):  # <![CDATA[text]]> (an empty one is a space to bs4)
        self.handle_data((data[6:] or " ") if data.upper().startswith("CDATA[") else "")


HIDDEN = ("script", "style", "template")  # bs4's .text leaves out what these hold


def html_text(text):
    """Text content of an HTML fragment: tags dropped, entities decoded ("<b>big</b> &amp; red" -> "big & red")."""
    if BeautifulSoup is not None:
        return BeautifulSoup(text, features="html.parser").text
    parser = TextOfHTML()
    parser.feed(text)
    parser.close()
    return "".join(parser.parts)


CONTROL = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f\u206a-\u206f\ufeff\ufff9-\ufffc]")
C1 = re.compile("[\x80-\x9f]")  # C1 control characters, most likely Windows-1252 bytes decoded as Latin-1
# what fix_unicode maps by hand: Latin ligatures (not æ, œ), the ideographic space and the full-width forms to plain
# letters, then curly quotes (also the one in "ŉ"'s NFKC) to straight ones
FULL_WIDTH = "\u3000" + "".join(map(chr, range(0xff01, 0xffef)))
FOLD = str.maketrans({c: unicodedata.normalize("NFKC", c) for c in "ĲĳŉǄǅǆǇǈǉǊǋǌǱǲǳﬀﬁﬂﬃﬄﬆ" + FULL_WIDTH} | {"ﬅ": "ſt"})
QUOTES = str.maketrans(dict.fromkeys("\u02bc\u2018\u2019\u201a\u201b", "'") 
                       | dict.fromkeys("\u201c\u201d\u201e\u201f", '"'))


def fix_unicode(text):
    """ftfy.fix_text(text) when ftfy is installed; else what it does to correctly decoded text: C1 controls read as
    Windows-1252, Latin ligatures and full-width forms to plain letters, curly quotes to straight ones, control
    characters removed, NFC. Its mojibake repair ("cafÃ©" -> "café") is not reproduced (such captions get other
    tokens than in v1.0)."""
    if ftfy is not None:
        return ftfy.fix_text(text)
    text = C1.sub(lambda m: m[0].encode("latin-1").decode("cp1252", "ignore") or m[0], text)
    return unicodedata.normalize("NFC", CONTROL.sub("", text.translate(FOLD).translate(QUOTES)))


def substitute(caption, rules):
    for pattern, repl in rules:
        caption = pattern.sub(repl, caption)
    return caption


def clean_once(caption):
    caption = substitute(urllib.parse.unquote_plus(str(caption)).strip().lower(), BEFORE_HTML)
    caption = substitute(html_text(caption), AFTER_HTML)
    if len(SEPARATOR.findall(caption)) > 3:
        caption = SEPARATOR.sub(" ", caption)
    return substitute(html.unescape(html.unescape(fix_unicode(caption))).strip(), AFTER_FIX).strip()


def clean_caption(caption):
    return clean_once(clean_once(caption))


# ----------------------------------------------------------------------------- loading T5 and CLIP
def load_encoder(encoder, what, from_pretrained, config, seed, make, load, folder="a local folder"):
    """(tokenizer, model): load() them for a hub id or folder from_pretrained (an OSError says how to get them);
    from_pretrained=None: ByT5's byte tokenizer and make(config and its vocab_size) a random model from seed, on a
    private RNG: train.py and sample.py must build the same random encoder, and building it must not shift the
    global RNG that drives the model's own initialisation."""
    from transformers import ByT5Tokenizer

    if from_pretrained is not None:
        try:
            return load()
        except OSError as e:
            raise OSError(f"could not load the {what} '{from_pretrained}': download it first (huggingface-cli download "
                          f"{from_pretrained}) or set text_encoder.from_pretrained to {folder} ({e})") from e
    if config is None:
        raise ValueError(f"{type(encoder).__name__}: give from_pretrained (a hub id or folder) or a config dict")
    tokenizer = ByT5Tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return tokenizer, make(dict(vocab_size=len(tokenizer)) | config)


# ----------------------------------------------------------------------------- T5
def t5_dtype(dtype):
    """The precision T5 runs in for a requested one: fp16 becomes bf16, the rest stay. T5 v1.1 was trained in bf16 and
    its XXL encoder's activations overflow fp16 (transformers keeps its `wo` layers in fp32 and clamps infs for
    that, but our .to(dtype) casts every layer). Only a run dtype handed down by train.py or prepare.py can be fp16
    (config.validate refuses text_encoder.dtype='fp16' for T5); STDiT.forward casts y to the model's dtype."""
    return torch.bfloat16 if dtype == torch.float16 else dtype


class T5Encoder:
    """T5's encoder, frozen. A plain class, not an nn.Module: `y_embedder` (the diffusion model's caption embedder,
    attached after both are built) must not become a submodule.

    from_pretrained: a hub id or a local folder (v1.0's layout, a folder holding `t5-v1_1-xxl/`, works too).
    from_pretrained=None: a random T5 encoder from `config` (T5Config keyword arguments, e.g. d_model=32, d_kv=8,
    d_ff=64, num_layers=2, num_heads=4), built from `seed` without touching the global RNG, over ByT5's tokenizer
    (UTF-8 bytes + 3 specials; vocab_size defaults to its 384 ids).
    dtype: v1.0's default, float32, is what its inference runs (scripts/inference.py passes none).
    shardformer: accepted for v1.0's configs and unused. (v1.0 uses it to fuse T5 kernels with ColossalAI for speed,
    and it also casts T5 to fp16 as a side effect; here `dtype` alone sets the precision, fp16 run as bf16: t5_dtype.)
    """

    def __init__(self, from_pretrained="DeepFloyd/t5-v1_1-xxl", model_max_length=120, device=None,
                 dtype=torch.float32, config=None, seed=0, shardformer=False, cache_dir=None):
        from transformers import AutoTokenizer, T5Config, T5EncoderModel

        nested = os.path.join(from_pretrained or "", "t5-v1_1-xxl")  # v1.0's "./pretrained_models/t5_ckpts" holds it
        path = nested if from_pretrained is not None and os.path.isdir(nested) else from_pretrained
        self.tokenizer, self.model = load_encoder(
            self, "T5 encoder", from_pretrained, config, seed, lambda config: T5EncoderModel(T5Config(**config)),
            lambda: (AutoTokenizer.from_pretrained(path, cache_dir=cache_dir),
                     T5EncoderModel.from_pretrained(path, cache_dir=cache_dir, dtype=t5_dtype(dtype))),
            folder="a local folder with its config, weights and spiece.model")
        self.model.to(device, t5_dtype(dtype)).eval().requires_grad_(False)
        self.model_max_length, self.output_dim = model_max_length, self.model.config.d_model
        self.y_embedder = None

    @torch.no_grad()
    def encode(self, texts):
        """list of B captions -> dict(y=(B, 1, L, C) in the encoder's dtype, mask=(B, L) int64).

        Every caption is padded or truncated to L = model_max_length tokens (EOS kept last); mask marks the real ones.
        """
        tokens = self.tokenizer([clean_caption(t) for t in texts], max_length=self.model_max_length,
                                padding="max_length", truncation=True, return_tensors="pt")
        ids, mask = tokens["input_ids"].to(self.model.device), tokens["attention_mask"].to(self.model.device)
        y = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, C)
        return dict(y=y[:, None], mask=mask)

    def null(self, n):
        """The "no caption" input for classifier-free guidance: the diffusion model's learned (L, C) null embedding,
        (n, 1, L, C). v1.0 reads it from the model, so `text_encoder.y_embedder = model.y_embedder` must come first."""
        if self.y_embedder is None:
            raise RuntimeError("text encoder: null() needs the diffusion model's caption embedder; "
                               "set text_encoder.y_embedder = model.y_embedder first")
        return self.y_embedder.y_embedding[None].repeat(n, 1, 1)[:, None]


# ----------------------------------------------------------------------------- CLIP and class labels (DiT, Latte)
class ClipEncoder:
    """CLIP's text transformer, frozen: a caption -> one pooled vector y (B, 1, 1, C), the final hidden state at the
    end-of-text token (no projection, so C is the hidden size: 512 for openai/clip-vit-base-patch32, which v1.0's DiT
    and Latte configs name). No mask: the models condition on the one vector (zoo_encoders_ref.pt).

    from_pretrained=None: a random CLIP text model from `config` (CLIPTextConfig keyword arguments) and `seed` over
    ByT5's byte tokenizer, for tests and the CPU demo. v1.0's wrapper sends the tokens to "cuda" whatever its device
    (it cannot run on a CPU); this one uses `device`.
    """

    def __init__(self, from_pretrained="openai/clip-vit-base-patch32", model_max_length=77, device=None,
                 dtype=torch.float32, config=None, seed=0):
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

        # random: the pooled token is the first eos (ByT5's id 1); positions for model_max_length tokens
        ids = dict(bos_token_id=0, pad_token_id=0, eos_token_id=1, max_position_embeddings=model_max_length)
        self.tokenizer, self.model = load_encoder(
            self, "CLIP text encoder", from_pretrained, config, seed,
            lambda config: CLIPTextModel(CLIPTextConfig(**(ids | config))),
            lambda: (CLIPTokenizer.from_pretrained(from_pretrained), CLIPTextModel.from_pretrained(from_pretrained)))
        self.model.to(device, dtype).eval().requires_grad_(False)
        self.model_max_length, self.output_dim = model_max_length, self.model.config.hidden_size
        self.y_embedder = None

    @torch.no_grad()
    def encode(self, texts):
        """list of B captions -> dict(y=(B, 1, 1, C)). v1.0 passes no attention mask: the causal attention keeps the
        end-of-text token's state independent of the padding after it."""
        ids = self.tokenizer(list(texts), max_length=self.model_max_length, padding="max_length", truncation=True,
                             return_tensors="pt")["input_ids"].to(self.model.device)
        return dict(y=self.model(input_ids=ids).pooler_output[:, None, None])

    null = T5Encoder.null  # the same: the diffusion model's learned null caption, (n, 1, 1, C) here


class ClassEncoder:
    """Class-conditional models: each prompt is a class id ("3", as the lines of v1.0's imagenet_id.txt); the null
    class for guidance is num_classes, the last row of the model's table (zoo_encoders_ref.pt)."""

    def __init__(self, num_classes, model_max_length=None, device=None, dtype=None):
        self.num_classes, self.device, self.y_embedder = num_classes, device, None
        self.model_max_length = self.output_dim = None  # what build_model receives: a label model takes neither

    def encode(self, texts):
        bad = [t for t in texts if not str(t).strip().isdigit() or int(t) >= self.num_classes]
        if bad:
            raise ValueError(f"classes: prompts must be class ids 0..{self.num_classes - 1}, got {bad[0]!r}")
        return dict(y=torch.tensor([int(t) for t in texts], device=self.device))

    def null(self, n):
        return torch.full((n,), self.num_classes, device=self.device)


# ----------------------------------------------------------------------------- config `text_encoder = dict(type=...)`
TEXT_ENCODERS = {"t5": T5Encoder, "clip": ClipEncoder, "classes": ClassEncoder}


def build_text_encoder(cfg, device=None, dtype=None):
    """cfg: dict with `type` (a key of TEXT_ENCODERS) and the class's keyword arguments, its dtype a name ("fp32",
    "bf16"); device overrides cfg's; dtype is the precision where cfg names none (none: fp32, v1.0's)."""
    cls = pick(TEXT_ENCODERS, "text_encoder", cfg)
    args = {k: v for k, v in cfg.items() if k != "type"} | ({} if device is None else dict(device=device))
    return cls(**args | dict(dtype=DTYPES[cfg["dtype"]] if "dtype" in cfg else dtype or torch.float32))
