"""Chat templates, message validation and template resolution (library level)."""

import pytest

from refserver.chat import NAMED_TEMPLATES, ChatTemplate, normalize_messages, resolve_chat_template
from refserver.chat.templates import detect_named_template
from refserver.errors import InvalidRequest

pytestmark = [pytest.mark.feature("templates"), pytest.mark.profile("refserver")]

BOOK = [{"role": "system", "content": "Book"}, {"role": "user", "content": "What is the best book"}]

# llama.cpp tools/server/tests/unit/test_chat_completion.py::test_chat_template expects the
# verbose prompt "<s> <|start_header_id|>system...": the "<s> " there is the BOS token the
# tokenizer adds (detokenized), not template output.
LLAMA3_BOOK = ("<|start_header_id|>system<|end_header_id|>\n\nBook<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nWhat is the best book<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n")
# llama.cpp test_chat_completion.py::test_apply_chat_template (/apply-template, command-r)
COMMAND_R_TEST = ("<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>You are a test.<|END_OF_TURN_TOKEN|>"
                  "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>Hi there<|END_OF_TURN_TOKEN|>"
                  "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>")


def test_llama3_exact():
    t = resolve_chat_template("llama3", None, None, "<|begin_of_text|>", "<|eot_id|>")
    assert t.render(BOOK) == LLAMA3_BOOK


def test_command_r_exact():
    t = resolve_chat_template("command-r", None, None, "<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>")
    msgs = [{"role": "system", "content": "You are a test."}, {"role": "user", "content": "Hi there"}]
    assert t.render(msgs) == COMMAND_R_TEST


@pytest.mark.parametrize("prefill", ["Whill", [{"type": "text", "text": "Wh"}, {"type": "text", "text": "ill"}]])
def test_assistant_prefill(prefill):
    t = resolve_chat_template("llama3", None, None)
    assert t.render(BOOK + [{"role": "assistant", "content": prefill}]) == LLAMA3_BOOK + "Whill"


MSGS = [{"role": "system", "content": "S"}, {"role": "user", "content": "U1"},
        {"role": "assistant", "content": "A1"}, {"role": "user", "content": "U2"}]
# the formats of llama.cpp's built-in formatter (src/llama-chat.cpp), no BOS
EXPECTED = {
    "chatml": "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n<|im_start|>user\nU2<|im_end|>\n<|im_start|>assistant\n",
    "llama2": "[INST] S\nU1 [/INST]A1</s>[INST] U2 [/INST]",
    "llama2-sys": "[INST] <<SYS>>\nS\n<</SYS>>\n\nU1 [/INST]A1</s>[INST] U2 [/INST]",
    "llama2-sys-bos": "[INST] <<SYS>>\nS\n<</SYS>>\n\nU1 [/INST]A1</s><s>[INST] U2 [/INST]",
    "mistral-v1": " [INST] S\n\nU1 [/INST] A1</s> [INST] U2 [/INST]",
    "mistral-v3": "[INST] S\n\nU1[/INST] A1</s>[INST] U2[/INST]",
    "mistral-v3-tekken": "[INST]S\n\nU1[/INST]A1</s>[INST]U2[/INST]",
    "mistral-v7": "[SYSTEM_PROMPT] S[/SYSTEM_PROMPT][INST] U1[/INST] A1</s>[INST] U2[/INST]",
    "phi3": "<|system|>\nS<|end|>\n<|user|>\nU1<|end|>\n<|assistant|>\nA1<|end|>\n<|user|>\nU2<|end|>\n<|assistant|>\n",
    "zephyr": "<|system|>\nS</s>\n<|user|>\nU1</s>\n<|assistant|>\nA1</s>\n<|user|>\nU2</s>\n<|assistant|>\n",
    "gemma": "<start_of_turn>user\nS\n\nU1<end_of_turn>\n<start_of_turn>model\nA1<end_of_turn>\n<start_of_turn>user\nU2<end_of_turn>\n<start_of_turn>model\n",
    "command-r": "<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>S<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>U1<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>A1<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>U2<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
    "llama3": "<|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nU1<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nA1<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nU2<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_named_templates(name):
    assert ChatTemplate(NAMED_TEMPLATES[name], "<s>", "</s>", name=name).render(MSGS) == EXPECTED[name]


def test_required_names_present():
    for n in ["chatml", "llama2", "llama3", "mistral", "phi3", "gemma", "command-r", "zephyr"]:
        assert n in NAMED_TEMPLATES


def test_no_generation_prompt():
    t = ChatTemplate(NAMED_TEMPLATES["chatml"])
    assert t.render([{"role": "user", "content": "hi"}], add_generation_prompt=False) == \
        "<|im_start|>user\nhi<|im_end|>\n"


@pytest.mark.parametrize("messages", [
    None, "string", [], [123], [{}], [{"role": 123}], [{"role": "system", "content": 123}],
    [{"role": "system", "content": "test"}, {}],
    [{"role": "user", "content": "test"}, {"role": "assistant", "content": "test"},
     {"role": "assistant", "content": "test"}],
    [{"role": "user"}], [{"role": "user", "content": "a"}, {"role": "assistant"}],
    [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
    [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}],
    [{"role": "user", "content": [{"type": "video", "x": 1}]}],
    [{"role": "user", "content": [{"type": "text", "text": 5}]}],
])
def test_invalid_messages(messages):
    with pytest.raises(InvalidRequest):
        normalize_messages(messages)


def test_multimodal_message_text():
    with pytest.raises(InvalidRequest, match="multimodal"):
        normalize_messages([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])


def test_normalize_parts_and_tool_calls():
    out = normalize_messages([
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
            {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "not json"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
        {"role": "user", "content": None},
    ])
    assert out[0]["content"] == "a\nb"
    assert out[1]["content"] is None
    assert out[1]["tool_calls"][0]["function"]["arguments"] == {"x": 1}
    assert out[1]["tool_calls"][1]["function"]["arguments"] == "not json"
    assert out[2]["tool_call_id"] == "c1"
    assert out[3]["content"] == ""


def test_sandbox_features():
    src = ("{{ messages[0].content | tojson }}|{{ {'b': 'é<'} | tojson }}|"
           "{{ strftime_now('%Y') | length }}|{{ foo }}|{{ bos_token }}")
    t = ChatTemplate(src, bos_token="<s>")
    out = t.render([{"role": "user", "content": "x\"y"}], template_kwargs={"foo": "bar"})
    assert out == '"x\\"y"|{"b": "é<"}|4|bar|<s>'


def test_raise_exception_and_errors():
    t = ChatTemplate("{{ raise_exception('Conversation roles must alternate') }}")
    with pytest.raises(InvalidRequest, match="Conversation roles must alternate"):
        t.render([{"role": "user", "content": "x"}])
    with pytest.raises(InvalidRequest, match="syntax"):
        ChatTemplate("{% for x in %}")
    with pytest.raises(InvalidRequest, match="chat template error"):
        ChatTemplate("{{ messages[0].content.nope() }}").render([{"role": "user", "content": "x"}])
    with pytest.raises(InvalidRequest):  # the immutable sandbox refuses mutation
        ChatTemplate("{% set l = [] %}{{ l.append(1) }}").render([{"role": "user", "content": "x"}])


def test_generation_block_and_loopcontrols():
    src = ("{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}"
           "{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}")
    assert ChatTemplate(src).render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]) == "a"


TOOL_TEMPLATE = """{%- if tools %}<tools>{% for t in tools %}{{ t.function.name }};{% endfor %}</tools>{% endif %}
{%- for m in messages %}<{{ m.role }}>{{ m.content or '' }}
{%- if m.tool_calls %}{% for c in m.tool_calls %}<call>{{ c.function.name }} {{ c.function.arguments | tojson }}</call>{% endfor %}{% endif %}
{%- if m.reasoning_content %}<think>{{ m.reasoning_content }}</think>{% endif %}</{{ m.role }}>
{%- endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"""

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def test_caps_tool_template():
    caps = ChatTemplate(TOOL_TEMPLATE).caps
    assert caps["supports_tools"] and caps["supports_tool_calls"] and caps["supports_system_role"]
    assert caps["supports_parallel_tool_calls"] and caps["supports_tool_responses"]
    assert caps["supports_preserve_reasoning"]
    out = ChatTemplate(TOOL_TEMPLATE).render([{"role": "user", "content": "hi"}], tools=[WEATHER])
    assert out == "<tools>get_weather;</tools><user>hi</user><assistant>"


def test_caps_named():
    caps = ChatTemplate(NAMED_TEMPLATES["chatml"]).caps
    assert caps["supports_system_role"] and not caps["supports_tools"] and not caps["supports_tool_calls"]


def test_tools_injected_when_template_cannot_render_them():
    out = ChatTemplate(NAMED_TEMPLATES["chatml"]).render(BOOK, tools=[WEATHER])
    assert out.startswith("<|im_start|>system\nBook\n\n# Tools")
    assert '"name": "get_weather"' in out and "<tool_call>" in out
    out = ChatTemplate(NAMED_TEMPLATES["gemma"]).render([{"role": "user", "content": "hi"}], tools=[WEATHER])
    assert out.startswith("<start_of_turn>user\n# Tools") and "get_weather" in out


def test_resolution_order(tmp_path):
    f = tmp_path / "t.jinja"
    f.write_text("FILE{{ messages[0].content }}")
    u = [{"role": "user", "content": "x"}]
    assert resolve_chat_template("llama3", str(f), "MODEL").render(u) == "FILEx"
    assert resolve_chat_template("This is not a chat template, it is", None, "MODEL").render(u) == \
        "This is not a chat template, it is"
    assert resolve_chat_template(None, None, "M{{ messages[0].content }}").render(u) == "Mx"
    listed = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]
    assert resolve_chat_template(None, None, listed).render(u) == "D"
    t = resolve_chat_template(None, None, None)
    assert t.name == "chatml" and t.render(u) == "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(InvalidRequest):
        resolve_chat_template(None, str(tmp_path / "missing.jinja"), None)


def test_no_jinja_uses_detected_builtin():
    hf_llama3 = ("{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
                 "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}")
    t = resolve_chat_template(None, None, hf_llama3, jinja=False)
    assert t.name == "llama3" and not t.jinja
    assert t.render(BOOK) == LLAMA3_BOOK
    assert resolve_chat_template(None, None, "{{ weird }}", jinja=False).name == "chatml"
    with pytest.raises(InvalidRequest, match="--jinja"):
        t.render(BOOK, tools=[WEATHER])


@pytest.mark.parametrize("src,name", [
    ("{{ '<|im_start|>' }}", "chatml"), ("<start_of_turn>", "gemma"),
    ("<|START_OF_TURN_TOKEN|><|USER_TOKEN|>", "command-r"), ("[INST] <<SYS>>", "llama2-sys"),
    ("<|user|><|assistant|><|end|>", "phi3"), ("<|user|>...<|endoftext|>", "zephyr"),
    ("[SYSTEM_PROMPT][INST]", "mistral-v7"), ("[INST]", "llama2"),
])
def test_detect(src, name):
    assert detect_named_template(src) == name
