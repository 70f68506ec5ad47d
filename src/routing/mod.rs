//! Model routing: which provider and upstream model serve a client model name.

use crate::config::Config;
use crate::providers::Provider;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct Target {
    pub provider: Arc<Provider>,
    /// The model name sent upstream.
    pub model: String,
}

#[derive(Debug)]
struct Route {
    pattern: String,
    target: Target,
}

#[derive(Debug)]
pub struct Router {
    routes: Vec<Route>,
    default: Option<Target>,
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
            let model = model
                .or_else(|| provider.default_model.clone())
                .ok_or_else(|| format!("provider {name:?} has no default model"))?;
            Ok(Target {
                provider: provider.clone(),
                model,
            })
        };
        let routes = config
            .models
            .routes
            .iter()
            .map(|r| {
                Ok(Route {
                    pattern: r.pattern.clone(),
                    target: target(&r.target)?,
                })
            })
            .collect::<Result<_, String>>()?;
        let default = config.models.default.as_deref().map(target).transpose()?;
        Ok(Router { routes, default })
    }

    pub fn resolve(&self, model: &str) -> Option<&Target> {
        self.routes
            .iter()
            .find(|r| glob_match(&r.pattern, model))
            .map(|r| &r.target)
            .or(self.default.as_ref())
    }

    /// Model names a client can ask for: each exact (non-glob) route name,
    /// then the default target's model, which any name reaches.
    pub fn model_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .routes
            .iter()
            .filter(|r| !r.pattern.contains(['*', '?']))
            .map(|r| r.pattern.clone())
            .collect();
        if let Some(d) = &self.default {
            names.push(d.model.clone());
        }
        let mut seen = std::collections::HashSet::new();
        names.retain(|n| seen.insert(n.clone()));
        names
    }
}

/// `*` matches any run of characters, `?` any one; everything else itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("claude-*haiku*", "claude-3-5-haiku-20241022"));
        assert!(glob_match("claude-opus-*", "claude-opus-4-8"));
        assert!(!glob_match("claude-opus-*", "claude-sonnet-4-5"));
        assert!(glob_match("gpt-?o", "gpt-4o"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
        assert!(glob_match("*", ""));
    }

    #[test]
    fn first_matching_route_then_default() {
        let config = Config::from_yaml(
            "providers:\n  a: {base_url: 'http://127.0.0.1:1', model: am}\n  b: {base_url: 'http://127.0.0.1:2'}\n\
             models:\n  default: a\n  routes:\n    - {match: 'claude-*haiku*', target: 'b:small'}\n    - {match: 'big', target: 'a:large'}\n",
        )
        .unwrap();
        let providers: Vec<Arc<Provider>> = config
            .providers
            .iter()
            .map(|(n, c)| Arc::new(Provider::from_config(n, c, &|_| None).unwrap()))
            .collect();
        let r = Router::new(&config, &providers).unwrap();
        let t = r.resolve("claude-haiku-4-5").unwrap();
        assert_eq!((t.provider.name.as_str(), t.model.as_str()), ("b", "small"));
        let t = r.resolve("big").unwrap();
        assert_eq!((t.provider.name.as_str(), t.model.as_str()), ("a", "large"));
        let t = r.resolve("claude-opus-4-8").unwrap();
        assert_eq!((t.provider.name.as_str(), t.model.as_str()), ("a", "am"));
        assert_eq!(r.model_names(), ["big", "am"]);
    }
}
