"""Chat templates known by name, so a config can say ``model.chat_template: llama2``.

A tokenizer's own template is always preferred (see ``posttrain.data.chat.ensure_chat_template``);
these are for tokenizers that ship none, or to override one on purpose. Each is the Jinja text the
original model ships, so a model fine-tuned with it and exported carries a template that
``transformers``, vLLM and TGI render the same way.
"""

from __future__ import annotations

from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""ChatML, the default chat template for tokenizers that ship none."""


# Meta's Llama-2-chat format: the system prompt is folded into the first user turn inside
# <<SYS>> markers, each user turn opens with bos, each assistant turn closes with eos.
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
    "{% else %}"
    "{% set loop_messages = messages %}{% set system_message = false %}"
    "{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}"
    "{% set content = message['content'] %}"
    "{% endif %}"
    "{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ ' ' + content.strip() + ' ' + eos_token }}"
    "{% endif %}"
    "{% endfor %}"
)
"""Llama-2-chat: ``<s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {assistant} </s>``."""

# Zephyr's template verbatim, line breaks included: transformers renders with trim_blocks and
# lstrip_blocks, so the newline after each `}}` is kept and every turn ends with "</s>\n".
ZEPHYR_TEMPLATE = """{% for message in messages %}
{% if message['role'] == 'user' %}
{{ '<|user|>
' + message['content'] + eos_token }}
{% elif message['role'] == 'system' %}
{{ '<|system|>
' + message['content'] + eos_token }}
{% elif message['role'] == 'assistant' %}
{{ '<|assistant|>
'  + message['content'] + eos_token }}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
{% endif %}
{% endfor %}"""
"""Zephyr: ``<|system|>\\n{system}</s>\\n<|user|>\\n{user}</s>\\n<|assistant|>\\n{assistant}</s>\\n``."""

# Raw text for base models (data.format=raw): every message's content as written, one after the other,
# each assistant message closed with eos so the model learns to stop; nothing is written for a
# generation prompt. The _BOS variant opens with bos, for tokenizers that put bos before every text.
_RAW_BODY = ("{% for message in messages %}{{ message['content'] }}"
             "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}")
RAW_TEMPLATE = _RAW_BODY
"""Raw text: ``{prompt}{completion}{eos}``."""
RAW_TEMPLATE_BOS = "{{ bos_token }}" + _RAW_BODY
"""Raw text after bos: ``{bos}{prompt}{completion}{eos}``."""
RAW_TEMPLATES = (RAW_TEMPLATE, RAW_TEMPLATE_BOS)

CHAT_TEMPLATES = {"chatml": CHATML_TEMPLATE, "llama2": LLAMA2_TEMPLATE, "zephyr": ZEPHYR_TEMPLATE}
"""Templates selectable by name in ``ModelConfig.chat_template``."""


def resolve_chat_template(spec: str) -> str:
    """The Jinja text named by ``spec``: a name in ``CHAT_TEMPLATES``, a ``.jinja`` file, or the template itself."""
    if spec in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[spec]
    if "{{" in spec or "{%" in spec:
        return spec
    path = Path(spec).expanduser()
    if path.is_file():
        return path.read_text(encoding="utf-8")
    raise ValueError(
        f"chat template {spec!r} is neither a known name ({', '.join(CHAT_TEMPLATES)}), "
        f"an existing .jinja file, nor Jinja text (it has no '{{{{' or '{{%'). "
        "Set model.chat_template to one of those."
    )
