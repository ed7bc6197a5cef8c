"""Chat templates: the HF Jinja text for ``tokenizer.chat_template`` and its Ollama Go-template counterpart.

Chat models answer with nonsense when the prompt is not in the format they were tuned on, and Ollama
needs that format twice (gguf-targets.md §10.5): as Jinja in the GGUF (llama.cpp, newer Ollama) and as a
Go ``TEMPLATE`` with ``stop`` parameters in the Modelfile (older Ollama). Each built-in format carries
both. The Jinja texts render like the models' published ``tokenizer_config.json`` templates (tests
compare them); the Go texts leave out the first BOS, which the tokenizer adds (``add_bos_token``).

Which template a conversion uses: ``--chat-template NAME|FILE`` if given, else tokenizer_config.json's
``chat_template``, else the map's ``chat_template`` default, else none.
"""

from dataclasses import dataclass
from pathlib import Path

from msckpt import safeio

from .errors import ConvertError


@dataclass(frozen=True)
class ChatFormat:
    name: str
    description: str
    jinja: str          # written to tokenizer.chat_template
    go: str             # the Modelfile TEMPLATE
    stops: tuple        # the Modelfile's PARAMETER stop values
    markers: tuple      # substrings that identify a Jinja template of this format
    tokens: tuple = ()  # texts the format needs as single vocabulary entries


def _jinja(text):
    """Template source written over several lines for reading; the ``-`` markers drop the line breaks."""
    return "".join(line.strip() for line in text.strip().splitlines())


_ALTERNATE = ("{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
              "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') -}}"
              "{%- endif -%}")

# Llama-2-chat: "<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} </s><s>[INST] ..."
LLAMA2_CHAT = ChatFormat(
    name="llama2-chat",
    description="Llama-2-chat: [INST] ... [/INST] turns, system prompt in <<SYS>> inside the first turn",
    jinja=_jinja("""
        {%- if messages and messages[0]['role'] == 'system' -%}
            {%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}
        {%- else -%}
            {%- set system = '' -%}{%- set turns = messages -%}
        {%- endif -%}
        {%- for message in turns -%}
            """ + _ALTERNATE + """
            {%- set content = message['content'] -%}
            {%- if loop.first and system -%}
                {%- set content = '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + content -%}
            {%- endif -%}
            {%- if message['role'] == 'user' -%}
                {{- bos_token + '[INST] ' + content.strip() + ' [/INST]' -}}
            {%- else -%}
                {{- ' ' + content.strip() + ' ' + eos_token -}}
            {%- endif -%}
        {%- endfor -%}
    """),
    go="""{{- $system := "" }}
{{- range .Messages }}
{{- if eq .Role "system" }}{{ $system = .Content }}
{{- else if eq .Role "user" }}[INST] {{ if $system }}<<SYS>>
{{ $system }}
<</SYS>>

{{ end }}{{ .Content }} [/INST]{{ $system = "" }}
{{- else if eq .Role "assistant" }} {{ .Content }} </s><s>
{{- end }}
{{- end }}""",
    stops=("[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"),
    markers=("[INST]", "<<SYS>>"),
)

# Mistral-7B-Instruct (v0.1/v0.2): "<s>[INST] {user} [/INST]{assistant}</s>[INST] ..."; the published
# template has no system role, so a system message is put before the first user message.
MISTRAL_INSTRUCT = ChatFormat(
    name="mistral-instruct",
    description="Mistral-Instruct v0.1/v0.2: [INST] ... [/INST] turns, no <<SYS>> block",
    jinja=_jinja("""
        {%- if messages and messages[0]['role'] == 'system' -%}
            {%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}
        {%- else -%}
            {%- set system = '' -%}{%- set turns = messages -%}
        {%- endif -%}
        {{- bos_token -}}
        {%- for message in turns -%}
            """ + _ALTERNATE + """
            {%- if message['role'] == 'user' -%}
                {%- if loop.first and system -%}
                    {{- '[INST] ' + system + '\\n\\n' + message['content'] + ' [/INST]' -}}
                {%- else -%}
                    {{- '[INST] ' + message['content'] + ' [/INST]' -}}
                {%- endif -%}
            {%- else -%}
                {{- message['content'] + eos_token -}}
            {%- endif -%}
        {%- endfor -%}
    """),
    go="""{{- $system := "" }}
{{- range .Messages }}
{{- if eq .Role "system" }}{{ $system = .Content }}
{{- else if eq .Role "user" }}[INST] {{ if $system }}{{ $system }}

{{ end }}{{ .Content }} [/INST]{{ $system = "" }}
{{- else if eq .Role "assistant" }}{{ .Content }}</s>
{{- end }}
{{- end }}""",
    stops=("[INST]", "[/INST]"),
    markers=("[INST]",),
)

# Llama-3-instruct: "<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>" per message.
LLAMA3_INSTRUCT = ChatFormat(
    name="llama3-instruct",
    description="Llama-3-instruct: <|start_header_id|>role<|end_header_id|> headers, <|eot_id|> ends a turn",
    jinja=_jinja("""
        {%- for message in messages -%}
            {%- if loop.first -%}{{- bos_token -}}{%- endif -%}
            {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' -}}
            {{- message['content'].strip() + '<|eot_id|>' -}}
        {%- endfor -%}
        {%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}
    """),
    go="""{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- end }}<|start_header_id|>assistant<|end_header_id|>

""",
    stops=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    markers=("<|start_header_id|>", "<|end_header_id|>"),
    tokens=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
)

# ChatML (Qwen, Yi-chat, InternLM2-chat, ...): "<|im_start|>{role}\n{content}<|im_end|>\n" per message.
# Qwen's own templates add a default system prompt when there is none; this one does not.
CHATML = ChatFormat(
    name="chatml",
    description="ChatML (Qwen and others): <|im_start|>role ... <|im_end|>",
    jinja=_jinja("""
        {%- for message in messages -%}
            {{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}
        {%- endfor -%}
        {%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}
    """),
    go="""{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
""",
    stops=("<|im_start|>", "<|im_end|>"),
    markers=("<|im_start|>",),
    tokens=("<|im_start|>", "<|im_end|>"),
)

# ChatGLM3-6B: "[gMASK]sop<|{role}|>\n {content}" per message, then "<|assistant|>". The model ends its turn by
# writing the next role token (<|user|>, or <|observation|> for a tool call). [gMASK]sop is the prefix GLM's
# tokenizers put before every text; llama.cpp adds no BOS for GLM (add_bos false), so the template carries it.
CHATGLM3 = ChatFormat(
    name="chatglm3",
    description="ChatGLM3: [gMASK]sop prefix, <|role|> turns, the model stops at <|user|> / <|observation|>",
    jinja=_jinja("""
        {%- for message in messages -%}
            {%- if loop.first -%}{{- '[gMASK]sop' -}}{%- endif -%}
            {{- '<|' + message['role'] + '|>\\n ' + message['content'] -}}
        {%- endfor -%}
        {%- if add_generation_prompt -%}{{- '<|assistant|>' -}}{%- endif -%}
    """),
    go="""[gMASK]sop{{ range .Messages }}<|{{ .Role }}|>
 {{ .Content }}
{{- end }}<|assistant|>""",
    stops=("<|user|>", "<|observation|>", "<|system|>"),
    markers=("[gMASK]sop",),
    tokens=("[gMASK]", "sop", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"),
)

# GLM-4 (GLM-4-9B-chat, GLM-4-0414, GLM-4.5): "[gMASK]<sop><|{role}|>\n{content}" per message, then "<|assistant|>"
GLM4 = ChatFormat(
    name="glm4",
    description="GLM-4: [gMASK]<sop> prefix, <|role|> turns, the model stops at <|user|> / <|observation|>",
    jinja=_jinja("""
        {{- '[gMASK]<sop>' -}}
        {%- for message in messages -%}
            {{- '<|' + message['role'] + '|>\\n' + message['content'] -}}
        {%- endfor -%}
        {%- if add_generation_prompt -%}{{- '<|assistant|>' -}}{%- endif -%}
    """),
    go="""[gMASK]<sop>{{ range .Messages }}<|{{ .Role }}|>
{{ .Content }}
{{- end }}<|assistant|>""",
    stops=("<|user|>", "<|observation|>", "<|system|>"),
    markers=("[gMASK]<sop>",),
    tokens=("[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"),
)

# DeepSeek-V3 / R1: "{bos}{system}<｜User｜>{user}<｜Assistant｜>{assistant}<｜end▁of▁sentence｜>..."; every system
# message goes first (joined by blank lines). Tool calls and outputs as the published template writes them (its
# first call of a conversation opens <｜tool▁calls▁begin｜>; only later calls close the block).
_DS_CALL = ("'<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n```json\\n' + "
            "tool['function']['arguments'] + '\\n```<｜tool▁call▁end｜>'")
DEEPSEEK3 = ChatFormat(
    name="deepseek3",
    description="DeepSeek-V3 / R1: <｜User｜> and <｜Assistant｜> turns, <｜end▁of▁sentence｜> ends an answer",
    jinja=_jinja("""
        {%- set ns = namespace(system='', first_system=true, tool=false, first_call=true, first_output=true) -%}
        {%- for message in messages -%}{%- if message['role'] == 'system' -%}
            {%- set ns.system = message['content'] if ns.first_system else ns.system + '\\n\\n' + message['content'] -%}
            {%- set ns.first_system = false -%}
        {%- endif -%}{%- endfor -%}
        {{- bos_token + ns.system -}}
        {%- for message in messages -%}
            {%- if message['role'] == 'user' -%}
                {%- set ns.tool = false -%}{{- '<｜User｜>' + message['content'] -}}
            {%- elif message['role'] == 'assistant' and message['content'] is none -%}
                {%- set ns.tool = false -%}
                {%- for tool in message['tool_calls'] -%}
                    {%- if ns.first_call -%}
                        {{- '<｜Assistant｜><｜tool▁calls▁begin｜>' + """ + _DS_CALL + """ -}}
                        {%- set ns.first_call = false -%}
                    {%- else -%}
                        {{- '\\n' + """ + _DS_CALL + """ + '<｜tool▁calls▁end｜><｜end▁of▁sentence｜>' -}}
                    {%- endif -%}
                {%- endfor -%}
            {%- elif message['role'] == 'assistant' -%}
                {{- ('<｜tool▁outputs▁end｜>' if ns.tool else '<｜Assistant｜>') + message['content'] -}}
                {{- '<｜end▁of▁sentence｜>' -}}{%- set ns.tool = false -%}
            {%- elif message['role'] == 'tool' -%}
                {%- set ns.tool = true -%}
                {{- ('<｜tool▁outputs▁begin｜>' if ns.first_output else '\\n') -}}
                {{- '<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>' -}}
                {%- set ns.first_output = false -%}
            {%- endif -%}
        {%- endfor -%}
        {%- if ns.tool -%}{{- '<｜tool▁outputs▁end｜>' -}}{%- endif -%}
        {%- if add_generation_prompt and not ns.tool -%}{{- '<｜Assistant｜>' -}}{%- endif -%}
    """),
    go="""{{- range .Messages }}
{{- if eq .Role "system" }}{{ .Content }}
{{- else if eq .Role "user" }}<｜User｜>{{ .Content }}
{{- else if eq .Role "assistant" }}<｜Assistant｜>{{ .Content }}<｜end▁of▁sentence｜>
{{- end }}
{{- end }}<｜Assistant｜>""",
    stops=("<｜User｜>", "<｜Assistant｜>"),
    markers=("<｜User｜>", "<｜Assistant｜>"),
    tokens=("<｜User｜>", "<｜Assistant｜>"),
)

FORMATS = {f.name: f for f in (LLAMA2_CHAT, LLAMA3_INSTRUCT, CHATML, MISTRAL_INSTRUCT, CHATGLM3, GLM4, DEEPSEEK3)}
ALIASES = {"llama2": "llama2-chat", "llama3": "llama3-instruct", "qwen": "chatml", "qwen2": "chatml",
           "mistral": "mistral-instruct", "chatglm4": "glm4", "glm-4": "glm4", "deepseek-v3": "deepseek3",
           "deepseek-r1": "deepseek3"}
# most specific first: a Llama-2 template also contains Mistral's marker
_RECOGNITION_ORDER = (LLAMA3_INSTRUCT, CHATML, GLM4, CHATGLM3, DEEPSEEK3, LLAMA2_CHAT, MISTRAL_INSTRUCT)


def lookup(name):
    """The built-in format called ``name`` (or an alias), or None."""
    return FORMATS.get(ALIASES.get(name, name))


def recognise(jinja_text):
    """The built-in format a Jinja chat template writes (by its characteristic markers), or None."""
    for fmt in _RECOGNITION_ORDER:
        if all(marker in jinja_text for marker in fmt.markers):
            return fmt
    return None


@dataclass
class Choice:
    jinja: str | None           # for tokenizer.chat_template
    format: ChatFormat | None   # for the Modelfile TEMPLATE; None if the template is not a built-in format
    origin: str                 # where the template came from, for messages


def choose(option, vocab, family_map):
    """The chat template of a conversion (see the module docstring for the order)."""
    if option is not None and option.lower() == "none":
        return Choice(None, None, "--chat-template none")
    if option is not None:
        fmt = lookup(option)
        if fmt is not None:
            return Choice(fmt.jinja, fmt, f"--chat-template {option}")
        text = _read_template_file(option)
        return Choice(text, recognise(text), f"--chat-template {option}")
    if vocab.chat_template:
        source = Path(vocab.source).parent / "tokenizer_config.json" if vocab.source else "tokenizer_config.json"
        return Choice(vocab.chat_template, recognise(vocab.chat_template), str(source))
    default = getattr(family_map, "chat_template", None)
    if default:
        fmt = lookup(default)
        return Choice(fmt.jinja, fmt, f"the map '{family_map.family}' default ({fmt.name})")
    return Choice(None, None, "none")


def apply(option, vocab, family_map):
    """Choose the chat template, store it in the vocabulary, and note what the user should know."""
    choice = choose(option, vocab, family_map)
    if option is not None and vocab.chat_template and choice.jinja != vocab.chat_template:
        vocab.warnings.append(f"{choice.origin} replaces the chat template of tokenizer_config.json")
    vocab.chat_template = choice.jinja
    if choice.format is not None:
        known = set(vocab.tokens)
        missing = [t for t in choice.format.tokens if t not in known]
        if missing:
            vocab.warnings.append(f"chat format {choice.format.name} ({choice.origin}) uses {', '.join(missing)}, "
                                  "which the vocabulary lacks: was the model tuned on this format?")
    return choice


def _read_template_file(spec):
    path = Path(spec)
    if not path.is_file():
        names = ", ".join(list(FORMATS) + ["none"])
        raise ConvertError(f"--chat-template {spec}: neither a built-in template ({names}) nor a file")
    text = safeio.read_text(path, ConvertError, "chat template", safeio.LARGE)
    if path.suffix == ".json":      # tokenizer_config.json or chat_template.json
        data = safeio.parse_json(text, path, ConvertError)
        text = data.get("chat_template") if isinstance(data, dict) else None
        if isinstance(text, list):      # [{"name": ..., "template": ...}]
            named = {t.get("name"): t.get("template") for t in text if isinstance(t, dict)}
            text = named.get("default") or next(iter(named.values()), None)
        if not isinstance(text, str):
            raise ConvertError(f"{path}: no \"chat_template\" string in this JSON file")
    if not text.strip():
        raise ConvertError(f"{path}: the chat template file is empty")
    return text
