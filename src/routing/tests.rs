use super::*;
use http::HeaderMap;

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

const CONFIG: &str = "
providers:
  a: {base_url: 'http://127.0.0.1:1', model: am}
  b: {base_url: 'http://127.0.0.1:2', model: bm}
  c: {base_url: 'http://127.0.0.1:3', model: cm}
  claude: {kind: anthropic, base_url: 'http://127.0.0.1:4'}
models:
  default: [a, b]
  routes:
    - {match: 'claude-*haiku*', target: 'b:small'}
    - {match: 'big', target: 'a:large'}
    - {match: 'claude-opus-*', target: {targets: [a, b, c], balance: affinity}}
routing:
  background: c:tiny
  think: [c:thinker, a]
  web_search: b:searcher
  long_context: {threshold_tokens: 1000, targets: c:long}
  rules:
    - {name: many-tools, min_tools: 20, targets: b:tools}
    - {name: by-header, header: 'x-team=infra', targets: claude}
";

fn router() -> Router {
    let config = Config::from_yaml(CONFIG).unwrap();
    let providers: Vec<Arc<Provider>> = config
        .providers
        .iter()
        .map(|(n, c)| Arc::new(Provider::from_config(n, c, &|_| None).unwrap()))
        .collect();
    Router::new(&config, &providers).unwrap()
}

fn features<'a>(model: &'a str, headers: &'a HeaderMap) -> Features<'a> {
    Features {
        model,
        tools: 0,
        estimated_tokens: 10,
        thinking: false,
        web_search: false,
        headers,
        session: None,
    }
}

/// (route, [provider/model ...]) of a decision.
fn decide(r: &Router, f: Features) -> (String, Vec<String>) {
    let d = r.decide(&f).unwrap();
    let targets = d
        .targets
        .iter()
        .map(|t| format!("{}/{}", t.provider.name, t.model_for(f.model)))
        .collect();
    (d.route, targets)
}

#[test]
fn each_route_in_order() {
    let r = router();
    let h = HeaderMap::new();
    let f = features("claude-sonnet-4-5", &h);
    assert_eq!(
        decide(&r, f),
        ("default".into(), vec!["a/am".into(), "b/bm".into()])
    );
    assert_eq!(decide(&r, features("big", &h)).1, ["a/large"]);
    // background beats the model map's haiku route
    assert_eq!(
        decide(&r, features("claude-haiku-4-5", &h)),
        ("background".into(), vec!["c/tiny".into()])
    );
    assert_eq!(
        decide(
            &r,
            Features {
                thinking: true,
                ..f
            }
        ),
        ("think".into(), vec!["c/thinker".into(), "a/am".into()])
    );
    assert_eq!(
        decide(
            &r,
            Features {
                web_search: true,
                thinking: true,
                ..f
            }
        )
        .0,
        "web_search"
    );
    assert_eq!(
        decide(
            &r,
            Features {
                estimated_tokens: 5000,
                web_search: true,
                ..f
            }
        )
        .0,
        "long_context"
    );
    assert_eq!(
        decide(
            &r,
            Features {
                tools: 24,
                estimated_tokens: 5000,
                ..f
            }
        ),
        ("rule:many-tools".into(), vec!["b/tools".into()])
    );
    let mut infra = HeaderMap::new();
    infra.insert("x-team", "infra".parse().unwrap());
    // An Anthropic target without a model passes the client's model through.
    assert_eq!(
        decide(&r, features("claude-sonnet-4-5", &infra)),
        (
            "rule:by-header".into(),
            vec!["claude/claude-sonnet-4-5".into()]
        )
    );
    let mut other = HeaderMap::new();
    other.insert("x-team", "web".parse().unwrap());
    assert_eq!(
        decide(&r, features("claude-sonnet-4-5", &other)).0,
        "default"
    );
}

#[test]
fn session_affinity_is_stable_and_spreads() {
    let r = router();
    let h = HeaderMap::new();
    let first = |session: &str| {
        let f = Features {
            session: Some(session),
            ..features("claude-opus-4-8", &h)
        };
        decide(&r, f).1
    };
    let a = first("session-1");
    assert_eq!(a.len(), 3, "every target stays in the chain as a fallback");
    for _ in 0..5 {
        assert_eq!(first("session-1"), a);
    }
    let starts: std::collections::HashSet<String> = (0..30)
        .map(|i| first(&format!("s{i}"))[0].clone())
        .collect();
    assert_eq!(
        starts.len(),
        3,
        "sessions spread over the equivalent targets"
    );
    // Without a session id the chain starts at its first target.
    assert_eq!(decide(&r, features("claude-opus-4-8", &h)).1[0], "a/am");
}

#[test]
fn model_names_lists_exact_routes_and_the_default() {
    assert_eq!(router().model_names(), ["big", "am"]);
}
