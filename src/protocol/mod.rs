//! The Anthropic Messages API as the gateway speaks it to clients.

pub mod anthropic;
pub mod error;
pub mod events;
pub mod sse;
pub mod validate;
