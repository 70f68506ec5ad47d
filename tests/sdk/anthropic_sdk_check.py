"""The official Anthropic Python SDK against Lynkr (run by tests/integration/sdk.rs).

Usage: python3 anthropic_sdk_check.py BASE_URL
The mock upstream behind Lynkr answers by the user's message text.
Exits non-zero with the failing assertion on any mismatch.
"""
import sys

import anthropic

base_url = sys.argv[1]
client = anthropic.Anthropic(base_url=base_url, api_key="sdk-test-key", max_retries=0)

TOOLS = [{
    "name": "Write",
    "description": "Write a file",
    "input_schema": {
        "type": "object",
        "properties": {"file_path": {"type": "string"}, "content": {"type": "string"}},
        "required": ["file_path", "content"],
    },
}]


def user(text):
    return [{"role": "user", "content": text}]


# 1. Streaming text, assembled by the SDK's helper.
with client.messages.stream(model="claude-sonnet-4-5", max_tokens=1024, messages=user("sdk-text")) as stream:
    streamed = "".join(stream.text_stream)
    final = stream.get_final_message()
assert streamed == "Hello from the mock gateway test", streamed
assert final.content[0].type == "text", final
assert final.content[0].text == streamed, final
assert final.stop_reason == "end_turn", final.stop_reason
assert final.usage.output_tokens == 6, final.usage
assert final.usage.input_tokens == 21, final.usage
assert final.model == "claude-sonnet-4-5", final.model

# 2. Streaming text then a tool call whose arguments arrive in many deltas.
with client.messages.stream(model="claude-sonnet-4-5", max_tokens=1024, tools=TOOLS,
                            messages=user("sdk-tool")) as stream:
    final = stream.get_final_message()
assert [b.type for b in final.content] == ["text", "tool_use"], final.content
assert final.content[0].text == "I'll write the file.", final.content[0]
tool = final.content[1]
assert tool.name == "Write" and tool.id == "call_sdk_1", tool
assert tool.input == {"file_path": "/tmp/sdk.txt", "content": "hello from the SDK test"}, tool.input
assert final.stop_reason == "tool_use", final.stop_reason

# 3. Non-streaming create.
msg = client.messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=user("sdk-json"))
assert msg.content[0].text == "plain json answer", msg
assert msg.stop_reason == "max_tokens", msg.stop_reason

# 4. An upstream 429 arrives as the SDK's RateLimitError with the upstream wording.
try:
    client.messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=user("sdk-429"))
    raise AssertionError("expected a RateLimitError")
except anthropic.RateLimitError as e:
    assert "Rate limit reached for test" in str(e), str(e)
    assert e.status_code == 429

# 5. Invalid input is the SDK's BadRequestError naming the field.
try:
    client.messages.create(model="claude-sonnet-4-5", max_tokens=0, messages=user("x"))
    raise AssertionError("expected a BadRequestError")
except anthropic.BadRequestError as e:
    assert "max_tokens" in str(e), str(e)

print("SDK OK")
