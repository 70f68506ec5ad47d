//! One integration test binary (links once): the built gateway over real
//! sockets against mock upstreams, the Anthropic Python SDK, and Claude Code.

mod claude_code;
mod common;
mod correctness;
mod gateway;
mod keys;
mod operations;
mod pools;
mod providers;
mod resilience;
mod sandbox;
mod sdk;
