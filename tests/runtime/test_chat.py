"""Chat templates: the default model's ChatML template, message validation, the sandbox."""

from __future__ import annotations

import json

import jinja2
import pytest

from runtime.chat import ChatTemplateError, compile_chat_template, render_chat
from runtime.errors import ErrorCode, InvalidRequest, ModelLoadError
from runtime.tokenizer import Tokenizer
from tests.reference_data import REFERENCE_DIR, real_model_metadata

REFERENCE = REFERENCE_DIR / "tokens.json"
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
USER = [{"role": "user", "content": "Write a haiku"}]


@pytest.fixture(scope="module")
def model_meta() -> dict:
    return real_model_metadata()


@pytest.fixture(scope="module")
def template(model_meta) -> str:
    return model_meta["tokenizer.chat_template"]


@pytest.fixture(scope="module")
def tok(model_meta) -> Tokenizer:
    return Tokenizer.from_metadata(model_meta)


def _render(template, messages, **kw):
    return render_chat(template, messages, bos_token="<|im_start|>", eos_token="<|im_end|>", **kw)


def test_default_template_renders_chatml(template):
    assert _render(template, USER) == (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
        "<|im_start|>user\nWrite a haiku<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ]
    assert _render(template, conversation, add_generation_prompt=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nBye<|im_end|>\n"
    )


def test_rendered_prompt_tokens(template, tok):
    ids = tok.encode(_render(template, USER))
    # <|im_start|> is a control token, "system" a single vocabulary entry
    assert tok.tokens[ids[0]] == "<|im_start|>" and ids[0] == 1
    assert tok.tokens[ids[1]] == "system" and ids[1] == 9690
    # llama.cpp's ids for the tail of exactly this prompt (special tokens cut the text, so the
    # tail encodes on its own)
    case = next(
        c for c in json.loads(REFERENCE.read_text()) if c["text"].startswith("<|im_start|>")
    )
    assert _render(template, USER).endswith(case["text"])
    assert ids[-len(case["ids"]) :] == case["ids"]
    assert ids[: -len(case["ids"])] == tok.encode(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n")
    assert tok.decode(ids) == _render(template, USER)


@pytest.mark.parametrize(
    "messages",
    [
        None,
        [],
        "hello",
        [("user", "hi")],
        [{"content": "hi"}],
        [{"role": "", "content": "hi"}],
        [{"role": "user", "content": None}],
        [{"role": "user", "content": ["a", "b"]}],
        [{"role": "user", "content": "hi", "extra": 1}],
    ],
)
def test_bad_messages_are_invalid_requests(template, messages):
    with pytest.raises(InvalidRequest) as info:
        _render(template, messages)
    assert info.value.field == "messages"
    assert info.value.code == ErrorCode.INVALID_REQUEST


@pytest.mark.parametrize(
    "attack",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ cycler.__init__.__globals__.os.system('touch MARKER') }}",
        "{{ lipsum.__globals__['os'].system('touch MARKER') }}",
        "{{ self.__init__.__globals__ }}",
        "{% if ''.__class__ %}leak{% endif %}",
        "{{ ('x'|attr('__class__')) }}",
        "{{ '{0.__class__}'.format('') }}",
        "{{ messages.append({'role': 'x'}) }}",
        "{{ 'a' * 100000000 }}",
        "{{ 7 ** 1000000 }}",
    ],
)
def test_sandbox_escapes_fail_clearly_and_run_nothing(tmp_path, attack):
    marker = tmp_path / "pwned"
    template = attack.replace("MARKER", str(marker))
    with pytest.raises(ChatTemplateError) as info:
        render_chat(template, USER, bos_token="", eos_token="")
    assert "sandbox forbids" in info.value.message
    assert isinstance(info.value, InvalidRequest)
    assert not marker.exists()


def test_template_can_refuse_messages():
    template = (
        "{% for m in messages %}{% if m['role'] not in ['user', 'assistant'] %}"
        "{{ raise_exception('Unsupported role: ' + m['role']) }}{% endif %}"
        "{{ m['content'] }}{% endfor %}"
    )
    assert render_chat(template, USER, bos_token="", eos_token="") == "Write a haiku"
    with pytest.raises(ChatTemplateError, match="Unsupported role: robot") as info:
        render_chat(template, [{"role": "robot", "content": "x"}], bos_token="", eos_token="")
    assert info.value.field == "messages"


def test_hf_environment_features():
    template = (
        "{{ bos_token }}{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}"
        "{{ m | tojson }}{% endfor %}{{ eos_token }}"
    )
    messages = [{"role": "user", "content": "café"}, {"role": "user", "content": "skipped"}]
    out = render_chat(template, messages, bos_token="<s>", eos_token="</s>")
    assert out == '<s>{"role": "user", "content": "café"}</s>'
    # trim_blocks + lstrip_blocks: block tags leave no blank lines behind
    template = (
        "{% for m in messages %}\n  {% if true %}\n{{ m['content'] }}\n  {% endif %}\n{% endfor %}"
    )
    assert render_chat(template, USER, bos_token="", eos_token="") == "Write a haiku\n"


def test_broken_template_is_a_load_error():
    with pytest.raises(ModelLoadError, match="not a valid Jinja template"):
        compile_chat_template("{% for m in messages %}")
    with pytest.raises(ModelLoadError, match="missing or empty"):
        render_chat("", USER, bos_token="", eos_token="")


# -- Qwen2.5's own template, tools branch included -----------------------------------------------

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city, in °C",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
TOOL_CHAT = [
    {"role": "user", "content": "Weather in Zürich?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Zürich"}}}],
    },
    {"role": "tool", "content": '{"celsius": 21}'},
    {"role": "tool", "content": '{"note": "sunny"}'},
]


def _plain_jinja(template: str, **context) -> str:
    """The same template in an ordinary (unsandboxed) Jinja environment with HF's options: the
    sandbox must not change what a well-behaved template renders."""
    env = jinja2.Environment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = lambda v, indent=None: json.dumps(v, ensure_ascii=False, indent=indent)
    return env.from_string(template).render(**context)


def test_qwen_template_renders_tools_calls_and_responses():
    from runtime.gguf_header import read_header
    from tests.reference_data import catalog_model_file

    metadata = read_header(catalog_model_file("qwen2.5-coder-0.5b")).metadata
    template = metadata["tokenizer.chat_template"]
    text = render_chat(template, TOOL_CHAT, bos_token="", eos_token="<|im_end|>", tools=[WEATHER])
    assert text == _plain_jinja(
        template, messages=TOOL_CHAT, tools=[WEATHER], add_generation_prompt=True
    )
    assert text.startswith(
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
        "assistant.\n\n# Tools\n\nYou may call one or more functions"
    )
    assert '<tools>\n{"type": "function", "function": {"name": "get_weather", ' in text
    assert "Weather of a city, in °C" in text  # tojson keeps non-ASCII text as it is
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": '
        '{"city": "Zürich"}}\n</tool_call><|im_end|>\n'
    ) in text
    assert (
        '<|im_start|>user\n<tool_response>\n{"celsius": 21}\n</tool_response>\n'
        '<tool_response>\n{"note": "sunny"}\n</tool_response><|im_end|>\n'
        "<|im_start|>assistant\n"
    ) in text
    ids = Tokenizer.from_metadata(metadata).encode(text)
    # <tool_call> is a user-defined token: each of its texts (2 in the instructions, the call)
    assert ids.count(151657) == text.count("<tool_call>") == 3
    # without tools: the default system turn, and the plain chat the reference prompt used
    plain = render_chat(template, TOOL_CHAT[:1], bos_token="", eos_token="<|im_end|>")
    assert plain.startswith("<|im_start|>system\nYou are Qwen") and "# Tools" not in plain


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(tools={"not": "a list"}), "tools"),
        (dict(messages=[{"role": "assistant", "content": None}]), "messages"),
        (dict(messages=[{"role": "assistant", "content": "x", "tool_calls": "no"}]), "messages"),
    ],
)
def test_bad_tools_and_tool_calls_are_invalid_requests(template, kwargs, field):
    args = dict(messages=[{"role": "user", "content": "hi"}], bos_token="", eos_token="")
    with pytest.raises(InvalidRequest) as info:
        render_chat(template, **{**args, **kwargs})
    assert info.value.field == field
