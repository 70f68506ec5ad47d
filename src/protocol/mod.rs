//! The Anthropic Messages API as the gateway speaks it to clients.

pub mod anthropic;
pub mod error;
pub mod estimate;
pub mod events;
pub mod readable;
pub mod sse;
pub mod tagged;
pub mod validate;
