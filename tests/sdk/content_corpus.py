"""A request holding every content block type the installed Anthropic Python
SDK defines, made from the SDK's own typed params (so the corpus grows when
the SDK does): every message content block, every tool_result content block,
every image and document source, every tool type and thinking mode.

Prints {"request": ..., "types": {...}} as JSON: the request, and the type
names it covers by place, for the Rust test to check against."""

import json
import sys
import typing
from typing import get_args, get_origin, get_type_hints

try:
    from typing import NotRequired, Required
except ImportError:  # pragma: no cover
    from typing_extensions import NotRequired, Required

import anthropic.types.beta as B
from anthropic.types.beta import message_create_params as MCP

ASSISTANT_ONLY = {"tool_use", "thinking", "redacted_thinking"}
USER_ONLY = {"tool_result", "image", "document"}


def is_typed_dict(tp):
    return isinstance(tp, type) and hasattr(tp, "__total__")


def members(tp):
    """The TypedDict classes a (possibly Union/Iterable/Optional) type names."""
    if is_typed_dict(tp):
        return [tp]
    out = []
    for a in get_args(tp):
        out += members(a)
    return out


def type_literal(cls):
    """The `type` tag of a block class (through Optional and Union)."""
    tp = get_type_hints(cls).get("type")
    while tp is not None and get_origin(tp) is not typing.Literal:
        args = [a for a in get_args(tp) if a is not type(None)]
        tp = args[0] if args else None
    return get_args(tp)[0] if tp is not None else None


def required_keys(cls):
    hints = get_type_hints(cls, include_extras=True)
    keys = []
    for k, tp in hints.items():
        origin = get_origin(tp)
        if origin is Required or (cls.__total__ and origin is not NotRequired):
            keys.append(k)
    return keys


def strip(tp):
    while get_origin(tp) in (Required, NotRequired, typing.Annotated):
        tp = get_args(tp)[0]
    return tp


def value(tp, depth=0):
    """A plausible value of a type: the first choice of every union."""
    tp = strip(tp)
    if depth > 8:
        return None
    if is_typed_dict(tp):
        return instance(tp, depth + 1)
    origin = get_origin(tp)
    args = get_args(tp)
    if origin is typing.Literal:
        return args[0]
    if origin is typing.Union or str(origin) == "types.UnionType":
        non_none = [a for a in args if a is not type(None)]
        # Prefer plain values over containers where a choice exists.
        for a in non_none:
            if strip(a) in (str, int, float, bool):
                return value(a, depth)
        return value(non_none[0], depth) if non_none else None
    if origin in (list, typing.List) or (origin is not None and "Iterable" in str(origin)) or (
        origin is not None and "Sequence" in str(origin)
    ):
        return [value(args[0], depth)] if args else []
    if origin in (dict, typing.Dict) or tp is dict or (origin is not None and "Mapping" in str(origin)):
        return {}
    if tp is str:
        return "x"
    if tp is bool:
        return True
    if tp is int:
        return 1
    if tp is float:
        return 1.0
    if tp is object or tp is typing.Any:
        return {}
    return "x"


def instance(cls, depth=0):
    hints = get_type_hints(cls, include_extras=True)
    out = {}
    for k in required_keys(cls):
        out[k] = value(hints[k], depth)
    t = type_literal(cls)
    if t is not None:
        out["type"] = t
    return out


def fix(block):
    """Values a real client would send where the first choice is not one."""
    t = block.get("type")
    if t == "tool_use":
        block.update(id="toolu_corpus_1", name="Read", input={"path": "/a"})
    if t == "tool_result":
        block["tool_use_id"] = "toolu_corpus_1"
    return block


def main():
    request_hints = get_type_hints(MCP.MessageCreateParamsNonStreaming)
    message_types = set()
    blocks = {"user": [], "assistant": []}
    for role_cls in members(B.BetaMessageParam):
        content = get_type_hints(role_cls)["content"]
        for cls in members(content):
            t = type_literal(cls)
            if t is None or t in message_types:
                continue
            message_types.add(t)
            role = "assistant" if t in ASSISTANT_ONLY else "user"
            blocks[role].append(fix(instance(cls)))
    tool_result_types = []
    for cls in members(get_type_hints(B.BetaToolResultBlockParam)["content"]):
        tool_result_types.append(type_literal(cls))
        blocks["user"].append(
            {"type": "tool_result", "tool_use_id": "toolu_corpus_1", "content": [instance(cls)]}
        )
    sources = {}
    for kind, cls in (("document", B.BetaRequestDocumentBlockParam), ("image", B.BetaImageBlockParam)):
        sources[kind] = []
        for src in members(get_type_hints(cls)["source"]):
            sources[kind].append(type_literal(src))
            block = instance(cls)
            block["source"] = instance(src)
            blocks["user"].append(block)
    tools = [instance(c) for c in members(request_hints["tools"])]
    for t in tools:
        if t.get("type") in (None, "custom"):
            t.update(name="Read", input_schema={"type": "object"})
    thinking = [type_literal(c) for c in members(request_hints["thinking"])]
    request = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "system": [{"type": "text", "text": "corpus"}],
        "tools": tools,
        "messages": [
            {"role": "user", "content": "start"},
            {"role": "assistant", "content": blocks["assistant"]},
            {"role": "user", "content": blocks["user"]},
        ],
    }
    json.dump(
        {
            "request": request,
            "thinking": [instance(c) for c in members(request_hints["thinking"])],
            "types": {
                "message": sorted(message_types),
                "tool_result": sorted(tool_result_types),
                "document_source": sorted(sources["document"]),
                "image_source": sorted(sources["image"]),
                "tools": sorted(str(t.get("type")) for t in tools),
                "thinking": sorted(thinking),
            },
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
