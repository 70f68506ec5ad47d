//! The safe command language: allow and deny rules over parsed commands
//! (`sandbox.commands`), under a mode (`sandbox.policy`):
//! - `isolate`: anything runs, contained by the namespaces; deny rules
//!   still refuse what they match;
//! - `allowlist`: every simple command of the line (those in pipelines,
//!   lists, groups and substitutions too) must match an allow rule and no
//!   deny rule, and a line the parser cannot read with certainty is denied.
//!
//! A rule is a program and argument patterns: `git status`, `git diff *`,
//! `cargo test *`. Each pattern word is a glob (`*`, `?`) on one word; a
//! last word `*` stands for any further arguments, none included. A word
//! whose value the shell decides at run time (`$VAR`, `$(...)`, a glob on
//! files) matches only a `*` pattern word. A deny rule matches when its
//! program matches and each of its other words matches some argument,
//! wherever it is: `git push --force*` denies `git push origin --force`.

use super::shell::{self, SimpleCommand};
use crate::util::glob_match;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Isolate,
    Allowlist,
}

/// One rule: `{allow: "git status"}` or `{deny: "git push --force*"}`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Rule {
    Allow { allow: String },
    Deny { deny: String },
}

impl Rule {
    fn pattern(&self) -> &str {
        match self {
            Rule::Allow { allow: p } | Rule::Deny { deny: p } => p,
        }
    }

    /// `allow "git status"`: how a decision names it.
    pub fn describe(&self) -> String {
        match self {
            Rule::Allow { allow: p } => format!("allow {p:?}"),
            Rule::Deny { deny: p } => format!("deny {p:?}"),
        }
    }
}

/// What the policy says of a command line, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow(String),
    Deny(String),
}

impl Decision {
    pub fn allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }
}

/// Variables whose assignment before a command changes what runs.
const DANGEROUS_ASSIGNMENTS: &[&str] = &[
    "PATH",
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "LD_AUDIT",
    "BASH_ENV",
    "ENV",
    "IFS",
    "SHELLOPTS",
    "PS4",
];

#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub mode: Mode,
    pub rules: Vec<Rule>,
}

impl Policy {
    /// The configured policy: `sandbox.policy`, `sandbox.commands`, and the
    /// rules of `sandbox.commands_file`.
    pub fn from_config(c: &crate::config::SandboxConfig) -> Result<Policy, String> {
        let mut rules = c.commands.clone();
        if !c.commands_file.is_empty() {
            let text = std::fs::read_to_string(&c.commands_file)
                .map_err(|e| format!("sandbox.commands_file {:?}: {e}", c.commands_file))?;
            let more: Vec<Rule> = serde_yaml::from_str(&text)
                .map_err(|e| format!("sandbox.commands_file {:?}: {e}", c.commands_file))?;
            rules.extend(more);
        }
        Self::check_rules(&rules)?;
        Ok(Policy {
            mode: c.policy,
            rules,
        })
    }

    /// Check every rule's pattern once (empty ones are refused).
    pub fn check_rules(rules: &[Rule]) -> Result<(), String> {
        for r in rules {
            if r.pattern().split_whitespace().next().is_none() {
                return Err(format!("{}: a rule needs a program", r.describe()));
            }
        }
        Ok(())
    }

    pub fn decide(&self, line: &str) -> Decision {
        let commands = match shell::parse(line) {
            Ok(c) => c,
            Err(shell::Unreadable(why)) => {
                return match self.mode {
                    Mode::Isolate => Decision::Allow(format!(
                        "policy isolate: not read with certainty ({why}); contained by the namespaces"
                    )),
                    Mode::Allowlist => Decision::Deny(format!("cannot be proven safe: {why}")),
                };
            }
        };
        let mut because = Vec::new();
        for cmd in &commands {
            match self.decide_one(cmd) {
                Decision::Deny(why) => return Decision::Deny(why),
                Decision::Allow(why) => because.push(why),
            }
        }
        match self.mode {
            Mode::Isolate => Decision::Allow("policy isolate: contained by the namespaces".into()),
            Mode::Allowlist if because.is_empty() => Decision::Allow("nothing to run".into()),
            Mode::Allowlist => {
                because.dedup();
                Decision::Allow(because.join("; "))
            }
        }
    }

    fn decide_one(&self, cmd: &SimpleCommand) -> Decision {
        let program = cmd.words.first().map(|w| w.text.as_str()).unwrap_or("");
        for r in &self.rules {
            if let Rule::Deny { deny: p } = r {
                if deny_matches(p, cmd) {
                    return Decision::Deny(format!(
                        "{program:?} is refused by rule {}",
                        r.describe()
                    ));
                }
            }
        }
        if self.mode == Mode::Isolate {
            return Decision::Allow(String::new());
        }
        if let Some(var) = cmd.assignments.iter().find_map(|a| {
            let name = a.split('=').next().unwrap_or("");
            DANGEROUS_ASSIGNMENTS.contains(&name).then_some(name)
        }) {
            return Decision::Deny(format!(
                "assigning {var} before a command changes what runs"
            ));
        }
        let Some(first) = cmd.words.first() else {
            return Decision::Allow("a variable assignment".into());
        };
        if first.dynamic {
            return Decision::Deny(format!(
                "the program {:?} is only known when the shell runs it",
                first.text
            ));
        }
        match self.rules.iter().find(|r| match r {
            Rule::Allow { allow: p } => allow_matches(p, cmd),
            Rule::Deny { .. } => false,
        }) {
            Some(r) => Decision::Allow(format!("rule {}", r.describe())),
            None => Decision::Deny(format!(
                "no allow rule matches {:?}",
                cmd.words
                    .iter()
                    .map(|w| w.text.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            )),
        }
    }
}

/// One pattern word against one command word.
fn word_matches(pattern: &str, word: &shell::Word) -> bool {
    if word.dynamic {
        return pattern == "*";
    }
    glob_match(pattern, &word.text)
}

/// Positional: each pattern word matches its word; a last `*` takes the rest.
fn allow_matches(pattern: &str, cmd: &SimpleCommand) -> bool {
    let pats: Vec<&str> = pattern.split_whitespace().collect();
    let words = &cmd.words;
    let (fixed, rest_any) = match pats.split_last() {
        Some((&"*", fixed)) => (fixed, true),
        _ => (&pats[..], false),
    };
    if words.len() < fixed.len() || (!rest_any && words.len() != fixed.len()) {
        return false;
    }
    fixed
        .iter()
        .zip(words.iter())
        .all(|(p, w)| word_matches(p, w))
}

/// The program matches, and each further pattern word matches some argument.
fn deny_matches(pattern: &str, cmd: &SimpleCommand) -> bool {
    let mut pats = pattern.split_whitespace();
    let (Some(program), Some(first)) = (pats.next(), cmd.words.first()) else {
        return false;
    };
    // A program only known at run time could be the denied one.
    if !(first.dynamic || glob_match(program, &first.text)) {
        return false;
    }
    pats.filter(|p| *p != "*").all(|p| {
        cmd.words[1..]
            .iter()
            .any(|w| w.dynamic || glob_match(p, &w.text))
    })
}
