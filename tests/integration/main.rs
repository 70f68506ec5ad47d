//! One integration test binary (links once): the built gateway over real
//! sockets against mock upstreams, the Anthropic Python SDK, and Claude Code.

mod common;
mod gateway;
mod sdk;
mod claude_code;
