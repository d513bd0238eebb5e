"""Built-in chat templates, selectable with `--chat-template NAME`.

Each is a Jinja template written for refserver whose output is the prompt text of that
model family, as llama.cpp's built-in (non-Jinja) formatter of the same name renders it
(src/llama-chat.cpp).  Like llama.cpp's built-ins they never emit the BOS token: the
tokenizer adds it (`add_special`), so the template text itself starts with the first turn.
Tools are not rendered by these templates (ChatTemplate injects a tool description into
the system message instead; see templates.py).

Names follow llama.cpp; "mistral" is an alias of "llama2" (Mistral-7B-Instruct v0.1 uses
that format; llama.cpp's detector also maps the name "mistral" to it).
"""

from __future__ import annotations

_C = "(message.content or '')"  # content; None (assistant with tool calls only) renders as ""

CHATML = r"""{%- for message in messages -%}
{{- '<|im_start|>' + message.role + '\n' + (message.content or '') + '<|im_end|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"""


def _llama2(system: bool, bos_inside: bool, strip: bool) -> str:
    content = f"({_C} | trim)" if strip else _C
    sys_out = (r"'<<SYS>>\n' + content + '\n<</SYS>>\n\n'" if system else r"content + '\n'")
    reopen = "'<s>[INST] '" if bos_inside else "'[INST] '"
    return (
        "{{- '[INST] ' -}}\n"
        "{%- set ns = namespace(inside=true) -%}\n"
        "{%- for message in messages -%}\n"
        f"{{%- set content = {content} -%}}\n"
        "{%- if not ns.inside -%}{%- set ns.inside = true -%}"
        f"{{{{- {reopen} -}}}}{{%- endif -%}}\n"
        f"{{%- if message.role == 'system' -%}}{{{{- {sys_out} -}}}}\n"
        "{%- elif message.role == 'user' -%}{{- content + ' [/INST]' -}}\n"
        "{%- else -%}{{- content + '</s>' -}}{%- set ns.inside = false -%}\n"
        "{%- endif -%}\n"
        "{%- endfor -%}")


def _mistral_v1_v3(lead: str, trail: str, trim_assistant: bool) -> str:
    asst = f"({_C} | trim)" if trim_assistant else _C
    return (
        "{%- set ns = namespace(inside=false) -%}\n"
        "{%- for message in messages -%}\n"
        "{%- if not ns.inside -%}{%- set ns.inside = true -%}"
        f"{{{{- '{lead}[INST]{trail}' -}}}}{{%- endif -%}}\n"
        f"{{%- if message.role == 'system' -%}}{{{{- {_C} + '\\n\\n' -}}}}\n"
        f"{{%- elif message.role == 'user' -%}}{{{{- {_C} + '{lead}[/INST]' -}}}}\n"
        f"{{%- else -%}}{{{{- '{trail}' + {asst} + '</s>' -}}}}{{%- set ns.inside = false -%}}\n"
        "{%- endif -%}\n"
        "{%- endfor -%}")


def _mistral_v7(trail: str) -> str:
    return (
        "{%- for message in messages -%}\n"
        f"{{%- if message.role == 'system' -%}}{{{{- '[SYSTEM_PROMPT]{trail}' + {_C} + '[/SYSTEM_PROMPT]' -}}}}\n"
        f"{{%- elif message.role == 'user' -%}}{{{{- '[INST]{trail}' + {_C} + '[/INST]' -}}}}\n"
        f"{{%- else -%}}{{{{- '{trail}' + {_C} + '</s>' -}}}}\n"
        "{%- endif -%}\n"
        "{%- endfor -%}")


def _role_turns(open_: str, mid: str, close: str, gen: str, trim: bool = False) -> str:
    """Templates of the form  open_ + role + mid + content + close  per message."""
    content = f"({_C} | trim)" if trim else _C
    return (
        "{%- for message in messages -%}\n"
        f"{{{{- '{open_}' + message.role + '{mid}' + {content} + {close} -}}}}\n"
        "{%- endfor -%}\n"
        f"{{%- if add_generation_prompt -%}}{{{{- '{gen}' -}}}}{{%- endif -%}}")


PHI3 = _role_turns("<|", r"|>\n", r"'<|end|>\n'", r"<|assistant|>\n")
PHI4 = _role_turns("<|im_start|>", "<|im_sep|>", "'<|im_end|>'", "<|im_start|>assistant<|im_sep|>")
FALCON3 = _role_turns("<|", r"|>\n", r"'\n'", r"<|assistant|>\n")
# Zephyr ends each turn with the model's EOS token (HuggingFaceH4/zephyr-7b-beta: "</s>";
# stablelm-zephyr: "<|endoftext|>", which is what llama.cpp's built-in hard-codes).
ZEPHYR = _role_turns("<|", r"|>\n", r"(eos_token or '</s>') + '\n'", r"<|assistant|>\n")
LLAMA3 = _role_turns("<|start_header_id|>", r"<|end_header_id|>\n\n", "'<|eot_id|>'",
                     r"<|start_header_id|>assistant<|end_header_id|>\n\n", trim=True)
LLAMA4 = _role_turns("<|header_start|>", r"<|header_end|>\n\n", "'<|eot|>'",
                     r"<|header_start|>assistant<|header_end|>\n\n", trim=True)

GEMMA = r"""{%- set ns = namespace(system='') -%}
{%- for message in messages -%}
{%- if message.role == 'system' -%}
{%- set ns.system = ns.system + ((message.content or '') | trim) -%}
{%- else -%}
{%- set role = 'model' if message.role == 'assistant' else message.role -%}
{{- '<start_of_turn>' + role + '\n' -}}
{%- if ns.system and role != 'model' -%}{{- ns.system + '\n\n' -}}{%- set ns.system = '' -%}{%- endif -%}
{{- ((message.content or '') | trim) + '<end_of_turn>\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<start_of_turn>model\n' -}}{%- endif -%}"""

COMMAND_R = r"""{%- set tokens = {'system': '<|SYSTEM_TOKEN|>', 'user': '<|USER_TOKEN|>', 'assistant': '<|CHATBOT_TOKEN|>'} -%}
{%- for message in messages -%}
{%- if message.role in tokens -%}
{{- '<|START_OF_TURN_TOKEN|>' + tokens[message.role] + ((message.content or '') | trim) + '<|END_OF_TURN_TOKEN|>' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>' -}}{%- endif -%}"""

VICUNA = r"""{%- for message in messages -%}
{%- if message.role == 'system' -%}{{- (message.content or '') + '\n\n' -}}
{%- elif message.role == 'user' -%}{{- 'USER: ' + (message.content or '') + '\n' -}}
{%- elif message.role == 'assistant' -%}{{- 'ASSISTANT: ' + (message.content or '') + '</s>\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"""

VICUNA_ORCA = VICUNA.replace(r"{{- (message.content or '') + '\n\n' -}}",
                             r"{{- 'SYSTEM: ' + (message.content or '') + '\n' -}}")

DEEPSEEK3 = r"""{%- for message in messages -%}
{%- if message.role == 'system' -%}{{- (message.content or '') + '\n\n' -}}
{%- elif message.role == 'user' -%}{{- '<｜User｜>' + (message.content or '') -}}
{%- elif message.role == 'assistant' -%}{{- '<｜Assistant｜>' + (message.content or '') + '<｜end▁of▁sentence｜>' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<｜Assistant｜>' -}}{%- endif -%}"""

NAMED_TEMPLATES: dict[str, str] = {
    "chatml": CHATML,
    "llama2": _llama2(system=False, bos_inside=False, strip=False),
    "llama2-sys": _llama2(system=True, bos_inside=False, strip=False),
    "llama2-sys-bos": _llama2(system=True, bos_inside=True, strip=False),
    "llama2-sys-strip": _llama2(system=True, bos_inside=False, strip=True),
    "mistral": _llama2(system=False, bos_inside=False, strip=False),
    "mistral-v1": _mistral_v1_v3(lead=" ", trail=" ", trim_assistant=False),
    "mistral-v3": _mistral_v1_v3(lead="", trail=" ", trim_assistant=True),
    "mistral-v3-tekken": _mistral_v1_v3(lead="", trail="", trim_assistant=False),
    "mistral-v7": _mistral_v7(trail=" "),
    "mistral-v7-tekken": _mistral_v7(trail=""),
    "phi3": PHI3,
    "phi4": PHI4,
    "falcon3": FALCON3,
    "zephyr": ZEPHYR,
    "gemma": GEMMA,
    "command-r": COMMAND_R,
    "llama3": LLAMA3,
    "llama4": LLAMA4,
    "vicuna": VICUNA,
    "vicuna-orca": VICUNA_ORCA,
    "deepseek3": DEEPSEEK3,
}
