//! Routing: which targets (provider and upstream model, in fallback order)
//! serve a request. Checked in this order, first match wins: the rules,
//! then the Claude-Code-aware routes (long_context, web_search, think,
//! background), then the model map, then the default.

use crate::config::{Balance, Config, RuleConfig, Targets};
use crate::protocol::anthropic::{
    ContentBlock, MessagesRequest, TextOrBlocks, Thinking, ToolResultBlock,
};
use crate::providers::{Needs, Provider};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct Target {
    pub provider: Arc<Provider>,
    /// The model name sent upstream; `None` (Anthropic kind only) passes
    /// the client's model through.
    pub model: Option<String>,
}

impl Target {
    pub fn model_for<'a>(&'a self, client_model: &'a str) -> &'a str {
        self.model.as_deref().unwrap_or(client_model)
    }
}

#[derive(Debug)]
struct Chain {
    targets: Vec<Target>,
    balance: Balance,
}

#[derive(Debug)]
struct Rule {
    config: RuleConfig,
    chain: Chain,
}

#[derive(Debug)]
pub struct Router {
    rules: Vec<Rule>,
    long_context: Option<(u64, Chain)>,
    web_search: Option<Chain>,
    think: Option<Chain>,
    background: Option<Chain>,
    models: Vec<(String, Chain)>,
    default: Option<Chain>,
}

/// What routing looks at, computed once per request.
#[derive(Debug, Clone, Copy)]
pub struct Features<'a> {
    pub model: &'a str,
    pub tools: usize,
    /// The gateway's one estimate (`protocol::estimate`), computed once.
    pub estimated_tokens: u64,
    pub thinking: bool,
    pub web_search: bool,
    pub headers: &'a http::HeaderMap,
    pub session: Option<&'a str>,
}

impl<'a> Features<'a> {
    pub fn of(
        req: &'a MessagesRequest<'a>,
        estimated_tokens: u64,
        headers: &'a http::HeaderMap,
    ) -> Self {
        let tools = req.tools.as_deref().unwrap_or_default();
        Features {
            thinking: matches!(req.thinking, Some(Thinking::Enabled { .. })),
            web_search: tools.iter().any(|t| {
                t.kind
                    .as_deref()
                    .is_some_and(|k| k.starts_with("web_search"))
            }),
            ..Features::basic(&req.model, tools.len(), estimated_tokens, headers)
        }
    }

    /// Features of a request known only by its model, tool count and size.
    pub fn basic(
        model: &'a str,
        tools: usize,
        estimated_tokens: u64,
        headers: &'a http::HeaderMap,
    ) -> Self {
        Features {
            model,
            tools,
            estimated_tokens,
            thinking: false,
            web_search: false,
            headers,
            session: headers
                .get("x-claude-code-session-id")
                .and_then(|v| v.to_str().ok()),
        }
    }

    /// Claude Code's background calls (titles, summaries) use a haiku model.
    pub fn background(&self) -> bool {
        self.model.contains("haiku")
    }
}

/// What a request needs of its provider (see `Capabilities::lacks`).
pub fn needs(req: &MessagesRequest, f: &Features) -> Needs {
    let image = |b: &ContentBlock| match b {
        // An Anthropic file id reaches other providers as a note, not an image.
        ContentBlock::Image {
            source: crate::protocol::anthropic::MediaSource::File { .. },
        } => false,
        ContentBlock::Image { .. } => true,
        ContentBlock::ToolResult {
            content: Some(TextOrBlocks::Blocks(rb)),
            ..
        } => rb
            .iter()
            .any(|r| matches!(r, ToolResultBlock::Image { .. })),
        _ => false,
    };
    Needs {
        tools: req.tools.iter().flatten().any(|t| t.is_client_tool()),
        vision: req.messages.iter().any(|m| match &m.content {
            TextOrBlocks::Blocks(b) => b.iter().any(image),
            TextOrBlocks::Text(_) => false,
        }),
        reasoning: f.thinking,
        estimated_tokens: f.estimated_tokens,
    }
}

/// The route taken and its targets in the order to try them.
#[derive(Debug)]
pub struct Decision<'r> {
    pub route: String,
    pub targets: Vec<&'r Target>,
}

impl Router {
    /// Build from a validated config and its providers.
    pub fn new(config: &Config, providers: &[Arc<Provider>]) -> Result<Router, String> {
        let target = |spec: &str| -> Result<Target, String> {
            let (name, model) = match spec.split_once(':') {
                Some((p, m)) if !m.is_empty() => (p, Some(m.to_string())),
                Some((p, _)) => (p, None),
                None => (spec, None),
            };
            let provider = providers
                .iter()
                .find(|p| p.name == name)
                .ok_or_else(|| format!("unknown provider {name:?}"))?;
            let model = model.or_else(|| provider.default_model.clone());
            if model.is_none() && provider.kind != crate::config::ProviderKind::Anthropic {
                return Err(format!("provider {name:?} has no default model"));
            }
            Ok(Target {
                provider: provider.clone(),
                model,
            })
        };
        let chain = |t: &Targets| -> Result<Chain, String> {
            Ok(Chain {
                targets: t
                    .list()
                    .iter()
                    .map(|s| target(s))
                    .collect::<Result<_, _>>()?,
                balance: t.balance(),
            })
        };
        let opt = |t: &Option<Targets>| t.as_ref().map(chain).transpose();
        let r = &config.routing;
        Ok(Router {
            rules: r
                .rules
                .iter()
                .map(|rule| {
                    Ok(Rule {
                        config: rule.clone(),
                        chain: chain(&rule.targets)?,
                    })
                })
                .collect::<Result<_, String>>()?,
            long_context: r
                .long_context
                .as_ref()
                .map(|lc| Ok::<_, String>((lc.threshold_tokens, chain(&lc.targets)?)))
                .transpose()?,
            web_search: opt(&r.web_search)?,
            think: opt(&r.think)?,
            background: opt(&r.background)?,
            models: config
                .models
                .routes
                .iter()
                .map(|m| Ok((m.pattern.clone(), chain(&m.target)?)))
                .collect::<Result<_, String>>()?,
            default: opt(&config.models.default)?,
        })
    }

    /// The route for a request, or `None` when nothing routes its model.
    pub fn decide(&self, f: &Features) -> Option<Decision<'_>> {
        let (route, chain): (String, &Chain) = if let Some(rule) =
            self.rules.iter().find(|r| rule_matches(&r.config, f))
        {
            (format!("rule:{}", rule.config.name), &rule.chain)
        } else if let Some((_, c)) = self
            .long_context
            .as_ref()
            .filter(|(threshold, _)| f.estimated_tokens > *threshold)
        {
            ("long_context".into(), c)
        } else if let Some(c) = self.web_search.as_ref().filter(|_| f.web_search) {
            ("web_search".into(), c)
        } else if let Some(c) = self.think.as_ref().filter(|_| f.thinking) {
            ("think".into(), c)
        } else if let Some(c) = self.background.as_ref().filter(|_| f.background()) {
            ("background".into(), c)
        } else if let Some((pattern, c)) = self.models.iter().find(|(p, _)| glob_match(p, f.model))
        {
            (format!("model:{pattern}"), c)
        } else {
            ("default".into(), self.default.as_ref()?)
        };
        let n = chain.targets.len();
        let first = match (chain.balance, f.session) {
            (Balance::Affinity, Some(session)) if n > 1 => (fnv1a(session) % n as u64) as usize,
            _ => 0,
        };
        Some(Decision {
            route,
            targets: (0..n).map(|i| &chain.targets[(first + i) % n]).collect(),
        })
    }

    /// Every model name the configuration names: its targets' models and
    /// its exact routes (the bound on metric labels).
    pub fn configured_models(&self) -> Vec<String> {
        let chains = self
            .rules
            .iter()
            .map(|r| &r.chain)
            .chain(self.long_context.iter().map(|(_, c)| c))
            .chain(self.web_search.iter())
            .chain(self.think.iter())
            .chain(self.background.iter())
            .chain(self.models.iter().map(|(_, c)| c))
            .chain(self.default.iter());
        let mut names: Vec<String> = chains
            .flat_map(|c| c.targets.iter().filter_map(|t| t.model.clone()))
            .collect();
        names.extend(self.model_names());
        names.sort();
        names.dedup();
        names
    }

    /// Model names a client can ask for: each exact (non-glob) model-map
    /// name, then the default target's model, which any name reaches.
    pub fn model_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .models
            .iter()
            .filter(|(p, _)| !p.contains(['*', '?']))
            .map(|(p, _)| p.clone())
            .collect();
        if let Some(m) = self
            .default
            .as_ref()
            .and_then(|d| d.targets.first())
            .and_then(|t| t.model.clone())
        {
            names.push(m);
        }
        let mut seen = std::collections::HashSet::new();
        names.retain(|n| seen.insert(n.clone()));
        names
    }
}

fn rule_matches(rule: &RuleConfig, f: &Features) -> bool {
    rule.model.as_deref().is_none_or(|p| glob_match(p, f.model))
        && rule.min_tools.is_none_or(|n| f.tools >= n)
        && rule.max_tools.is_none_or(|n| f.tools <= n)
        && rule.min_tokens.is_none_or(|n| f.estimated_tokens >= n)
        && rule.max_tokens.is_none_or(|n| f.estimated_tokens <= n)
        && rule.header.as_deref().is_none_or(|h| {
            let (name, value) = match h.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim())),
                None => (h.trim(), None),
            };
            f.headers
                .get(name)
                .is_some_and(|v| value.is_none_or(|want| v.to_str().is_ok_and(|got| got == want)))
        })
}

pub use crate::util::{fnv1a, glob_match};

#[cfg(test)]
mod tests;
