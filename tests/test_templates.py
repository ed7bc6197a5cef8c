"""Built-in chat templates render like the models' published templates, in Jinja, Go and llama.cpp.

The reference templates below are the ``chat_template`` strings of the families' published
``tokenizer_config.json`` files (Llama-2-chat, Meta-Llama-3-Instruct, Qwen2-Instruct, Mistral-7B-Instruct-v0.1,
plain ChatML, ChatGLM3-6B, and GLM-4-9B-chat's without its tool-use branch). The GLM formats are also compared with
llama.cpp's own built-in chatglm3 / chatglm4 formats. They are rendered with jinja2 the way transformers does (sandboxed, trim_blocks,
lstrip_blocks, with messages, bos_token, eos_token, add_generation_prompt and raise_exception).

The Go templates cannot be run here (no Go, no Ollama), so ``go_render`` below interprets the small part of
Go's text/template they use (range, if/else if, eq, variables, trim markers) with Go's rules.
"""

import json
import re

import pytest
from conftest import FIXTURES, LLAMA, TOKENIZER, convert
from gguf import GGUFReader

from gguf_out import templates
from gguf_out.templates import (CHATGLM3, CHATML, DEEPSEEK3, FORMATS, GLM4, LLAMA2_CHAT, LLAMA3_INSTRUCT,
                                 MISTRAL_INSTRUCT)

jinja2 = pytest.importorskip("jinja2")
from jinja2.sandbox import ImmutableSandboxedEnvironment  # noqa: E402

# --- the published templates (tokenizer_config.json "chat_template") -------------------------------------------

REF_LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
    "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ "
    "raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if "
    "loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
    "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if "
    "message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] "
    "== 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")

REF_LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 "
    "%}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ "
    "'<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")

REF_QWEN2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\n"
    "You are a helpful assistant.<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n'"
    " }}{% endif %}")

REF_CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
    "'\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

REF_MISTRAL = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ "
    "raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if "
    "message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == "
    "'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles "
    "are supported!') }}{% endif %}{% endfor %}")

# THUDM/chatglm3-6b
REF_CHATGLM3 = (
    "{% for message in messages %}{% if loop.first %}[gMASK]sop<|{{ message['role'] }}|>\n {{ message['content'] }}"
    "{% else %}<|{{ message['role'] }}|>\n {{ message['content'] }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}")

# THUDM/glm-4-9b-chat without the branch that writes the tool list into a system message (item['tools'])
REF_GLM4 = (
    "[gMASK]<sop>{% for item in messages %}{% if item['content'] %}<|{{ item['role'] }}|>{{ item['metadata'] }}\n"
    "{{ item['content'] }}{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")

# DeepSeek-V3's (tokenizer_config.json; the fixture's copy is MindFormers r1.8.0's, predict_deepseek3_671b.yaml)
REF_DEEPSEEK3 = json.loads((FIXTURES / "bpe" / "deepseek3" / "hf" / "tokenizer_config.json").read_text())[
    "chat_template"]

# the special tokens each family's tokenizer passes as bos_token / eos_token (GLM's add no BOS: the template has
# the [gMASK]<sop> prefix)
SPECIALS = {"llama2-chat": ("<s>", "</s>"), "mistral-instruct": ("<s>", "</s>"),
            "llama3-instruct": ("<|begin_of_text|>", "<|eot_id|>"), "chatml": ("", "<|im_end|>"),
            "chatglm3": ("", "</s>"), "glm4": ("", "<|endoftext|>"),
            "deepseek3": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>")}

SYSTEM = {"role": "system", "content": "You are a terse assistant."}
TURNS = [{"role": "user", "content": "Hello, who are you?"},
         {"role": "assistant", "content": "I am a model.\nHow can I help?"},
         {"role": "user", "content": "Name three colours."}]
WITH_SYSTEM, WITHOUT_SYSTEM, ONE_TURN = [SYSTEM] + TURNS, TURNS, [SYSTEM, TURNS[0]]
CONVERSATIONS = {"with system": WITH_SYSTEM, "without system": WITHOUT_SYSTEM, "one turn": ONE_TURN}

# (built-in format, reference, conversations the reference renders the same way)
CASES = [
    (LLAMA2_CHAT, REF_LLAMA2, list(CONVERSATIONS)),
    (LLAMA3_INSTRUCT, REF_LLAMA3, list(CONVERSATIONS)),
    (CHATML, REF_CHATML, list(CONVERSATIONS)),
    (CHATML, REF_QWEN2, ["with system", "one turn"]),      # Qwen2 adds a default system prompt when there is none
    (MISTRAL_INSTRUCT, REF_MISTRAL, ["without system"]),   # v0.1 has no system role
    (CHATGLM3, REF_CHATGLM3, list(CONVERSATIONS)),
    (GLM4, REF_GLM4, list(CONVERSATIONS)),
    (DEEPSEEK3, REF_DEEPSEEK3, list(CONVERSATIONS)),
]


class TemplateError(Exception):
    pass


def _raise(message):
    raise TemplateError(message)


def hf_render(template, messages, name, add_generation_prompt=True, specials=None):
    """Render like transformers' apply_chat_template."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    bos, eos = specials or SPECIALS[name]
    return env.from_string(template).render(messages=messages, bos_token=bos, eos_token=eos,
                                            add_generation_prompt=add_generation_prompt, raise_exception=_raise)


@pytest.mark.parametrize("fmt,reference,conversations", CASES,
                         ids=[f"{c[0].name}-{i}" for i, c in enumerate(CASES)])
def test_builtin_jinja_renders_like_the_published_template(fmt, reference, conversations):
    for key in conversations:
        assert hf_render(fmt.jinja, CONVERSATIONS[key], fmt.name) == \
            hf_render(reference, CONVERSATIONS[key], fmt.name), key


def test_the_references_differ_from_each_other():
    """Negative control: the comparison above can fail (the families' renderings are all different)."""
    rendered = {fmt.name: hf_render(fmt.jinja, WITHOUT_SYSTEM, fmt.name) for fmt in FORMATS.values()}
    assert len(set(rendered.values())) == len(FORMATS)
    assert hf_render(REF_QWEN2, WITHOUT_SYSTEM, "chatml") != hf_render(CHATML.jinja, WITHOUT_SYSTEM, "chatml")


def test_glm_renderings_in_full():
    """ChatGLM3 and GLM-4 prompts spelled out: the [gMASK] prefix, role tokens, no end-of-turn token (the model
    ends its turn by writing the next role token)."""
    assert hf_render(CHATGLM3.jinja, ONE_TURN, "chatglm3") == (
        "[gMASK]sop<|system|>\n You are a terse assistant.<|user|>\n Hello, who are you?<|assistant|>")
    assert hf_render(GLM4.jinja, ONE_TURN, "glm4") == (
        "[gMASK]<sop><|system|>\nYou are a terse assistant.<|user|>\nHello, who are you?<|assistant|>")


LLAMA_CPP_BUILTIN = {"chatglm3": "chatglm3", "glm4": "chatglm4"}


@pytest.mark.parametrize("fmt", [CHATGLM3, GLM4], ids=lambda f: f.name)
def test_glm_formats_render_like_llama_cpp_builtin_templates(fmt):
    """llama.cpp's C++ chatglm3 / chatglm4 formats (what it uses when it recognises the template) give the same
    prompt; its chatglm4 also opens the assistant's line with a newline, which GLM-4 writes itself."""
    llamacpp = pytest.importorskip("llamacpp")
    pytest.importorskip("xllamacpp")
    for key, messages in CONVERSATIONS.items():
        ours = hf_render(fmt.jinja, messages, fmt.name)
        theirs = llamacpp.apply_builtin_chat_template(LLAMA_CPP_BUILTIN[fmt.name], messages, add_assistant=True)
        assert (theirs.removesuffix("\n") if fmt is GLM4 else theirs) == ours, key
    assert llamacpp.apply_builtin_chat_template("chatglm4", WITH_SYSTEM, True) != \
        llamacpp.apply_builtin_chat_template("chatglm3", WITH_SYSTEM, True)


def call(name, arguments):
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


DEEPSEEK_TOOLS = {
    "two systems": [SYSTEM, {"role": "system", "content": "Answer in French."}] + TURNS,
    "one call": [SYSTEM, TURNS[0], {"role": "assistant", "content": None, "tool_calls": [call("f", '{"x": 1}')]},
                 {"role": "tool", "content": "42"}, {"role": "assistant", "content": "It is 42."},
                 {"role": "user", "content": "Thanks."}],
    "two calls, two outputs": [TURNS[0], {"role": "assistant", "content": None, "tool_calls": [
        call("f", "{}"), call("g", '{"y": "z"}')]}, {"role": "tool", "content": "a"}, {"role": "tool", "content": "b"}],
}


def test_deepseek3_renders_tool_use_like_the_published_template():
    for key, messages in DEEPSEEK_TOOLS.items():
        for prompt in (True, False):
            assert hf_render(DEEPSEEK3.jinja, messages, "deepseek3", prompt) == \
                hf_render(REF_DEEPSEEK3, messages, "deepseek3", prompt), key


def test_deepseek3_rendering_in_full():
    assert hf_render(DEEPSEEK3.jinja, WITH_SYSTEM, "deepseek3") == (
        "<｜begin▁of▁sentence｜>You are a terse assistant.<｜User｜>Hello, who are you?<｜Assistant｜>I am a model.\n"
        "How can I help?<｜end▁of▁sentence｜><｜User｜>Name three colours.<｜Assistant｜>")
    assert hf_render(DEEPSEEK3.jinja, DEEPSEEK_TOOLS["one call"], "deepseek3", False).endswith(
        "<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n{\"x\": 1}\n```"
        "<｜tool▁call▁end｜><｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>42<｜tool▁output▁end｜>"
        "<｜tool▁outputs▁end｜>It is 42.<｜end▁of▁sentence｜><｜User｜>Thanks.")


def test_deepseek3_tool_comparison_can_fail():
    """Negative control: a template that closes the tool-output block differently does not pass."""
    broken = DEEPSEEK3.jinja.replace("'<｜tool▁outputs▁end｜>' if ns.tool", "'<｜Assistant｜>' if ns.tool")
    assert hf_render(broken, DEEPSEEK_TOOLS["one call"], "deepseek3") != \
        hf_render(REF_DEEPSEEK3, DEEPSEEK_TOOLS["one call"], "deepseek3")


def test_llama2_rendering_in_full():
    """The Llama-2-chat prompt spelled out (gguf-targets.md §10.6)."""
    assert hf_render(LLAMA2_CHAT.jinja, WITH_SYSTEM, "llama2-chat") == (
        "<s>[INST] <<SYS>>\nYou are a terse assistant.\n<</SYS>>\n\nHello, who are you? [/INST] I am a model.\n"
        "How can I help? </s><s>[INST] Name three colours. [/INST]")


def test_mistral_system_message_goes_before_the_first_user_message():
    assert hf_render(MISTRAL_INSTRUCT.jinja, WITH_SYSTEM, "mistral-instruct") == (
        "<s>[INST] You are a terse assistant.\n\nHello, who are you? [/INST]I am a model.\nHow can I help?</s>"
        "[INST] Name three colours. [/INST]")


@pytest.mark.parametrize("fmt", [LLAMA2_CHAT, MISTRAL_INSTRUCT], ids=lambda f: f.name)
def test_roles_must_alternate_like_the_reference(fmt):
    bad = [TURNS[0], TURNS[0]]
    with pytest.raises(TemplateError, match="must alternate"):
        hf_render(fmt.jinja, bad, fmt.name)


def test_fixture_template_is_the_published_llama2_one():
    config = json.loads((LLAMA / "tokenizer" / "tokenizer_config.json").read_text())
    assert config["chat_template"] == REF_LLAMA2


# --- Go templates ------------------------------------------------------------------------------------------------

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_WORD = re.compile(r'"(?:[^"\\]|\\.)*"|\S+')
_SPACE = " \t\r\n"


def _lex(template):
    items = []
    pos = 0
    for m in _ACTION.finditer(template):
        text = template[pos:m.start()]
        items.append(["text", text.rstrip(_SPACE) if m.group(1) else text])
        items.append(["action", m.group(2).strip(), bool(m.group(3))])
        pos = m.end()
    items.append(["text", template[pos:]])
    for i, item in enumerate(items):
        if item[0] == "action" and item[2]:
            items[i + 1][1] = items[i + 1][1].lstrip(_SPACE)
    return items


def _parse(items, i=0, stop=("end",)):
    """Nodes until an action in ``stop``; returns (nodes, index of the stopping action)."""
    nodes = []
    while i < len(items):
        kind, text = items[i][0], items[i][1]
        if kind == "text":
            if text:
                nodes.append(("text", text))
            i += 1
            continue
        word = text.split(" ", 1)[0]
        if word in stop or text.startswith("else"):
            return nodes, i
        if word == "range":
            body, i = _parse(items, i + 1)
            nodes.append(("range", text[len("range"):].strip(), body))
            i += 1
        elif word == "if":
            branches, cond = [], text[2:].strip()
            while True:
                body, i = _parse(items, i + 1)
                branches.append((cond, body))
                action = items[i][1]
                if action == "end":
                    break
                cond = action[len("else if"):].strip() if action.startswith("else if") else "true"
            nodes.append(("if", branches))
            i += 1
        elif re.match(r"\$\w+ :?= ", text):
            name, op, expr = text.split(" ", 2)
            nodes.append(("set", name, expr, op == ":="))
            i += 1
        else:
            nodes.append(("print", text))
            i += 1
    return nodes, i


def _value(word, dot, scopes):
    if word.startswith('"'):
        return json.loads(word)
    if word == "true":
        return True
    if word == ".":
        return dot
    if word.startswith("."):
        return dot[word[1:]]
    if word.startswith("$."):
        return scopes[0]["$"][word[2:]]
    for scope in reversed(scopes):
        if word in scope:
            return scope[word]
    raise NameError(f"undefined variable {word}")


def _eval(expr, dot, scopes):
    words = _WORD.findall(expr)
    if words[0] == "eq":
        return _value(words[1], dot, scopes) == _value(words[2], dot, scopes)
    assert len(words) == 1, f"unsupported pipeline {expr!r}"
    return _value(words[0], dot, scopes)


def _run(nodes, dot, scopes, out):
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "print":
            out.append(str(_eval(node[1], dot, scopes)))
        elif node[0] == "set":
            _, name, expr, declare = node
            value = _eval(expr, dot, scopes)
            if declare:
                scopes[-1][name] = value
            else:
                next(s for s in reversed(scopes) if name in s)[name] = value
        elif node[0] == "range":
            for item in _eval(node[1], dot, scopes):
                _run(node[2], item, scopes + [{}], out)
        elif node[0] == "if":
            for cond, body in node[1]:
                if _eval(cond, dot, scopes):        # Go truth: non-empty, non-zero
                    _run(body, dot, scopes + [{}], out)
                    break


def go_render(template, messages):
    """What Ollama's Go template gives for a chat (messages as Ollama passes them: .Messages with .Role/.Content)."""
    nodes, i = _parse(_lex(template))
    assert i == len(_lex(template)), "unbalanced end"
    data = {"Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]}
    out = []
    _run(nodes, data, [{"$": data}], out)
    return "".join(out)


def test_go_interpreter_follows_go_rules():
    """Trim markers eat all adjacent white space; variables assigned in a range persist (Go >= 1.11)."""
    assert go_render("a  {{- \"b\" -}}\n\n c", []) == "abc"
    assert go_render("{{ $x := \"\" }}{{ range .Messages }}{{ $x = .Content }}{{ end }}[{{ $x }}]",
                     [{"role": "user", "content": "hi"}]) == "[hi]"
    assert go_render("{{ range .Messages }}{{ if eq .Role \"user\" }}U{{ else if eq .Role \"system\" }}S"
                     "{{ else }}A{{ end }}{{ end }}", WITH_SYSTEM) == "SUAU"


@pytest.mark.parametrize("fmt", list(FORMATS.values()), ids=lambda f: f.name)
def test_go_template_renders_like_the_jinja_template(fmt):
    """Ollama's prompt = the Jinja prompt without the first BOS, which Ollama's tokenizer adds (add_bos_token)."""
    bos = SPECIALS[fmt.name][0]
    for key, messages in CONVERSATIONS.items():
        expected = hf_render(fmt.jinja, messages, fmt.name)
        assert expected.startswith(bos)
        assert go_render(fmt.go, messages) == expected[len(bos):], key


def test_go_comparison_can_fail():
    """Negative control: a Go template with one space wrong does not pass."""
    broken = LLAMA2_CHAT.go.replace(" [/INST]", "[/INST]")
    assert go_render(broken, WITH_SYSTEM) != hf_render(LLAMA2_CHAT.jinja, WITH_SYSTEM, "llama2-chat")[3:]


@pytest.mark.parametrize("fmt", list(FORMATS.values()), ids=lambda f: f.name)
def test_stop_tokens_end_the_models_turn(fmt):
    """Whatever the template puts between an answer and the next user message contains a stop string, so a
    model that goes on to write the next turn itself is cut off."""
    rendered = go_render(fmt.go, WITH_SYSTEM + [{"role": "assistant", "content": "Red."},
                                                {"role": "user", "content": "More."}])
    between = rendered[rendered.index("Red.") + 4:rendered.index("More.")]
    assert any(stop in between for stop in fmt.stops), between
    # each stop is written by the template: literally, or as a GLM role token <|{{ .Role }}|>
    role_token = "<|{{ .Role }}|>" in fmt.go
    assert all(stop in fmt.go or (role_token and stop.startswith("<|") and stop.endswith("|>")) for stop in fmt.stops)
    assert '"""' not in fmt.go      # it goes between """ quotes in the Modelfile


def test_recognise_published_templates():
    assert templates.recognise(REF_LLAMA2) is LLAMA2_CHAT
    assert templates.recognise(REF_LLAMA3) is LLAMA3_INSTRUCT
    assert templates.recognise(REF_QWEN2) is CHATML
    assert templates.recognise(REF_CHATML) is CHATML
    assert templates.recognise(REF_MISTRAL) is MISTRAL_INSTRUCT
    assert templates.recognise(REF_CHATGLM3) is CHATGLM3
    assert templates.recognise(REF_GLM4) is GLM4
    assert templates.recognise(REF_DEEPSEEK3) is DEEPSEEK3
    for fmt in FORMATS.values():
        assert templates.recognise(fmt.jinja) is fmt
    assert templates.recognise("{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}") is None


def test_lookup_by_alias():
    assert templates.lookup("qwen") is CHATML and templates.lookup("llama3") is LLAMA3_INSTRUCT
    assert templates.lookup("llama2-chat") is LLAMA2_CHAT and templates.lookup("alpaca") is None
    assert templates.lookup("chatglm4") is GLM4 and templates.lookup("chatglm3") is CHATGLM3


# --- which template a conversion writes --------------------------------------------------------------------------

MHA = LLAMA / "mha" / "model.ckpt"


def chat_template_of(path):
    field = GGUFReader(path).fields.get("tokenizer.chat_template")
    return None if field is None else field.contents()


@pytest.fixture
def bare_tokenizer(tmp_path):
    """tokenizer.model without a tokenizer_config.json beside it."""
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes(TOKENIZER.read_bytes())
    return folder / "tokenizer.model"


def test_tokenizer_config_template_is_kept(tmp_path):
    out = tmp_path / "o.gguf"
    assert convert(MHA, out) == 0
    assert chat_template_of(out) == REF_LLAMA2


def test_map_default_when_tokenizer_config_has_none(tmp_path, bare_tokenizer):
    out = tmp_path / "o.gguf"
    assert convert(MHA, out, tokenizer=bare_tokenizer) == 0
    assert chat_template_of(out) == LLAMA2_CHAT.jinja


def test_no_template_without_map_default(tmp_path, bare_tokenizer):
    from gguf_out.maps import maps_dir
    data = json.loads((maps_dir() / "llama2.json").read_text())
    del data["chat_template"]
    custom = tmp_path / "custom.json"
    custom.write_text(json.dumps(data))
    out = tmp_path / "o.gguf"
    assert convert(MHA, out, tokenizer=bare_tokenizer, map_name=str(custom)) == 0
    assert chat_template_of(out) is None


def test_option_by_name_replaces_tokenizer_config(tmp_path, capsys):
    out = tmp_path / "o.gguf"
    assert convert(MHA, out, "--chat-template", "chatml", quiet=False) == 0
    assert chat_template_of(out) == CHATML.jinja
    err = capsys.readouterr().err
    assert "--chat-template chatml replaces the chat template of tokenizer_config.json" in err
    assert "uses <|im_start|>, <|im_end|>, which the vocabulary lacks" in err


def test_option_from_a_jinja_file(tmp_path):
    template = tmp_path / "chat.jinja"
    template.write_text(REF_LLAMA3 + "\n")
    out = tmp_path / "o.gguf"
    assert convert(MHA, out, "--chat-template", template) == 0
    assert chat_template_of(out) == REF_LLAMA3 + "\n"


def test_option_from_a_tokenizer_config_json(tmp_path):
    config = tmp_path / "tokenizer_config.json"
    config.write_text(json.dumps({"chat_template": REF_QWEN2}))
    out = tmp_path / "o.gguf"
    assert convert(MHA, out, "--chat-template", config) == 0
    assert chat_template_of(out) == REF_QWEN2


def test_option_none(tmp_path):
    out = tmp_path / "o.gguf"
    assert convert(MHA, out, "--chat-template", "none") == 0
    assert chat_template_of(out) is None


def test_unknown_template_name_is_an_error(tmp_path, capsys):
    out = tmp_path / "o.gguf"
    assert convert(MHA, out, "--chat-template", "alpaca") == 1
    err = capsys.readouterr().err.strip()
    assert err == ("ms2gguf: error: --chat-template alpaca: neither a built-in template (llama2-chat, "
                   "llama3-instruct, chatml, mistral-instruct, chatglm3, glm4, deepseek3, none) nor a file")
    assert not out.exists()


def test_map_with_unknown_chat_template(tmp_path, capsys):
    from gguf_out.maps import maps_dir
    data = json.loads((maps_dir() / "llama2.json").read_text())
    data["chat_template"] = "vicuna"
    custom = tmp_path / "custom.json"
    custom.write_text(json.dumps(data))
    assert convert(MHA, tmp_path / "o.gguf", map_name=str(custom)) == 1
    assert "unknown chat_template 'vicuna'" in capsys.readouterr().err


# --- llama.cpp renders the embedded templates the same way ------------------------------------------------------


def _next_token_view(server, request, chat):
    response = server.handle_chat_completions(request) if chat else server.handle_completions(request)
    content = response["choices"][0]["logprobs"]["content"][0]
    return response["usage"]["prompt_tokens"], [(t["id"], round(t["logprob"], 4)) for t in content["top_logprobs"]]


@pytest.mark.parametrize("name", list(FORMATS))
def test_llama_cpp_jinja_renders_the_embedded_template_like_jinja2(tmp_path, name):
    """llama-server's chat endpoint renders tokenizer.chat_template with llama.cpp's own Jinja engine; the
    model's next-token distribution after it equals that after our jinja2 rendering fed as a plain prompt
    (a tiny random model: any difference in the prompt tokens shows)."""
    xllamacpp = pytest.importorskip("xllamacpp")
    from llamacpp import LlamaModel

    out = tmp_path / f"{name}.gguf"
    assert convert(MHA, out, "--outtype", "f32", "--chat-template", name) == 0
    with LlamaModel(out) as model:
        assert model.chat_template() == FORMATS[name].jinja
    params = xllamacpp.CommonParams()
    params.model.path = str(out)
    params.n_ctx, params.warmup, params.n_parallel, params.use_jinja = 512, False, 1, True
    params.verbosity = -1       # its log is written from C after pytest stops capturing
    server = xllamacpp.Server(params)
    try:
        messages = WITH_SYSTEM if name != "mistral-instruct" else WITHOUT_SYSTEM
        common = {"max_tokens": 1, "temperature": 0.0, "n_probs": 8, "cache_prompt": False}
        chat = _next_token_view(server, {"messages": messages, "logprobs": True, "top_logprobs": 8, **common}, True)
        # the test model's vocabulary is Llama-2's: BOS <s>, which llama.cpp adds when tokenizing
        prompt = hf_render(FORMATS[name].jinja, messages, name, specials=("<s>", "</s>")).removeprefix("<s>")
        plain = _next_token_view(server, {"prompt": prompt, "logprobs": 8, **common}, False)
        assert chat == plain
        # negative control: one character less in the prompt changes what the model sees
        assert _next_token_view(server, {"prompt": prompt[:-2] + prompt[-1], "logprobs": 8, **common}, False) != chat
    finally:
        del server
