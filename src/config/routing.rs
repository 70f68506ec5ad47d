//! Routing settings: the Claude-Code-aware routes and the target lists
//! (fallback chains) that routes and the model map point at.

use serde::{Deserialize, Serialize};

/// One target (`provider` or `provider:model`), a list tried in order (a
/// fallback chain), or a list with a balancing mode.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Targets {
    One(String),
    Chain(Vec<String>),
    Balanced(BalancedTargets),
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BalancedTargets {
    pub targets: Vec<String>,
    #[serde(default)]
    pub balance: Balance,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Always start with the first target; the rest are fallbacks.
    #[default]
    Fallback,
    /// The targets are equivalent: a Claude Code session
    /// (`X-Claude-Code-Session-Id`) always starts at the same one, so the
    /// provider's prompt cache stays warm; the others are its fallbacks.
    Affinity,
}

impl Targets {
    pub fn list(&self) -> &[String] {
        match self {
            Targets::One(t) => std::slice::from_ref(t),
            Targets::Chain(v) => v,
            Targets::Balanced(b) => &b.targets,
        }
    }

    pub fn balance(&self) -> Balance {
        match self {
            Targets::Balanced(b) => b.balance,
            _ => Balance::Fallback,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingConfig {
    /// Claude Code's background calls: a haiku-class model name.
    pub background: Option<Targets>,
    /// Requests with `thinking: {type: enabled}`.
    pub think: Option<Targets>,
    /// Requests whose estimated input exceeds `threshold_tokens`.
    pub long_context: Option<LongContextRoute>,
    /// Requests carrying a web search server tool (`web_search_*`).
    pub web_search: Option<Targets>,
    /// Anything else, first match wins; checked before the routes above.
    pub rules: Vec<RuleConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LongContextRoute {
    #[serde(default = "default_long_context_threshold")]
    pub threshold_tokens: u64,
    pub targets: Targets,
}

fn default_long_context_threshold() -> u64 {
    60_000
}

/// A rule matches when every condition it states holds.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    /// A model name or `*`/`?` glob.
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub min_tools: Option<usize>,
    #[serde(default)]
    pub max_tools: Option<usize>,
    #[serde(default)]
    pub min_tokens: Option<u64>,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// `name` (present) or `name=value` (equal).
    #[serde(default)]
    pub header: Option<String>,
    pub targets: Targets,
}
