//! The command line: `lynkr [run] [-c FILE] [-u] [-d] [-t]` runs the
//! gateway; the other subcommands work on a configuration or on the store
//! (the same file the running server uses; SQLite's WAL lets both work on
//! it at once, and the server sees key changes within `auth.refresh_ms`).

use crate::config::Config;
use crate::store::budgets::{self, BudgetSpec, Metric, Period, Scope};
use crate::store::keys::{self, ApiKey, KeySpec};
use crate::store::usage::{self, Filter, GroupBy};
use crate::util::date;

pub const HELP: &str = "\
lynkr: a gateway that runs Claude Code (and any Anthropic Messages API client)
on any model provider.

Usage: lynkr [COMMAND] [OPTIONS]

Commands:
  run            Run the gateway (the default): -c FILE, -u (take over from a
                 running lynkr), -d (daemon), -t (test the configuration)
  check-config   Check a configuration file and print every problem
  keys           Make, list, change and revoke API keys (`lynkr keys help`)
  budgets        Set, list and delete budgets of keys, users and teams
                 (`lynkr budgets help`)
  usage          Sum the usage ledger by day, model, session, key or user
  sandbox        Run a command in the namespace sandbox, as the gateway
                 would (`lynkr sandbox help`)
  policy         Say whether the command policy allows a command line, and
                 the rule that decided (`lynkr policy check 'CMD'`)
  help           This text

Without -c, the embedded default configuration is used; LYNKR_* environment
variables override either. `lynkr run --help` lists the server's flags.
";

pub const KEYS_HELP: &str = "\
Usage: lynkr keys COMMAND [-c FILE] [OPTIONS]

  create --name N [--user U] [--team T] [--models GLOB,...] [--rpm N]
         [--tpm N] [--max-in-flight N] [--expires YYYY-MM-DD]
         [--budget-usd X] [--budget-tokens N] [--budget-requests N]
         [--period day|week|month|total]
                 Make a key; prints the key alone on stdout (shown only now).
                 --budget-*: budgets of the key over --period (default month)
  list [--json]  Every key: name, prefix, user, team, models, limits, state
  update N [--user U] [--team T] [--models GLOB,...] [--rpm N]
         [--tpm N] [--max-in-flight N] [--expires YYYY-MM-DD]
                 Change what the options set; the rest stays
  revoke N       Refuse key N from now on (a running server: within
                 auth.refresh_ms); its ledger rows stay

The store is store.path of the configuration (or LYNKR_DB_PATH).
--rpm, --tpm (tokens per minute) and --max-in-flight replace
resilience.rate_limit's setting for the key; 0 lifts it.
";

pub const BUDGETS_HELP: &str = "\
Usage: lynkr budgets COMMAND [-c FILE] [OPTIONS]

  set (--key N | --user U | --team T) (--usd X | --tokens N | --requests N)
      [--period day|week|month|total] [--soft X]
                 Create the budget, or change its limits (one budget per
                 subject, metric and period; --period defaults to month)
  list [--json]  Every budget with what the ledger holds for its period
  delete ID      Remove budget ID

A request is refused with 402 billing_error when its worst case (the input
estimate plus max_tokens of output, priced by providers.NAME.pricing) would
take a budget of its key, its key's user or its key's team past the limit.
Periods are UTC: a day, a week from Monday, a month from the 1st. --soft X
logs once a period and counts budget_soft_limit_crossed_total.
";

pub const USAGE_HELP: &str = "\
Usage: lynkr usage [-c FILE] [--key N] [--since YYYY-MM-DD] [--by day|model|session|key|user] [--json]

Sums of the usage ledger: requests, input and output tokens, cost (USD),
errors, one line per group (default --by day).
";

pub const SANDBOX_HELP: &str = "\
Usage: lynkr sandbox run [-c FILE] [--workspace DIR] [--timeout SECS] -- CMD [ARGS...]

Runs CMD in new user, mount, PID, network, IPC and UTS namespaces, with the
limits of the configuration's `sandbox` settings, as the gateway runs the
commands of a model: a read-only root, its own /tmp and /proc, no network
but its own loopback, DIR (default: a new workspace under
sandbox.workspace_root) at /workspace. One CMD argument is a shell line
(`sh -c`); several are quoted and joined. Prints the command's stdout and
stderr and exits with its status: 124 when --timeout (default
sandbox.timeout_ms) ends it, 125 when no sandbox could be made.
";

/// Options after a subcommand: `--name value` pairs and positional words.
struct Args {
    flags: Vec<(String, Option<String>)>,
    words: Vec<String>,
}

/// Flags that take no value.
const SWITCHES: &[&str] = &["--json"];

impl Args {
    fn parse(args: &[String]) -> Result<Args, String> {
        let (mut flags, mut words) = (Vec::new(), Vec::new());
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if a.starts_with('-') && a.len() > 1 {
                if SWITCHES.contains(&a.as_str()) {
                    flags.push((a.clone(), None));
                } else {
                    let v = it.next().ok_or_else(|| format!("{a} needs a value"))?;
                    flags.push((a.clone(), Some(v.clone())));
                }
            } else {
                words.push(a.clone());
            }
        }
        Ok(Args { flags, words })
    }

    /// Every flag must be one of `known`.
    fn only(&self, known: &[&str]) -> Result<(), String> {
        match self
            .flags
            .iter()
            .find(|(f, _)| !known.contains(&f.as_str()))
        {
            Some((f, _)) => Err(format!("unknown option {f}")),
            None => Ok(()),
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(f, _)| f == name)
            .and_then(|(_, v)| v.as_deref())
    }

    fn has(&self, name: &str) -> bool {
        self.flags.iter().any(|(f, _)| f == name)
    }

    fn number(&self, name: &str) -> Result<Option<u64>, String> {
        self.get(name)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| format!("{name} {v:?}: not a whole number"))
            })
            .transpose()
    }
}

/// `lynkr keys ...`: exit status.
pub fn keys(args: &[String]) -> i32 {
    report(run_keys(args))
}

/// `lynkr budgets ...`: exit status.
pub fn budgets(args: &[String]) -> i32 {
    report(run_budgets(args))
}

/// `lynkr sandbox ...`: exit status.
pub fn sandbox(args: &[String]) -> i32 {
    match run_sandbox(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lynkr: {e}");
            125
        }
    }
}

fn run_sandbox(args: &[String]) -> Result<i32, String> {
    match args.first().map(String::as_str) {
        Some("run") => {}
        Some("help" | "--help" | "-h") => {
            print!("{SANDBOX_HELP}");
            return Ok(0);
        }
        _ => {
            eprint!("{SANDBOX_HELP}");
            return Err("sandbox: which command? (run)".into());
        }
    }
    let rest = &args[1..];
    let split = rest
        .iter()
        .position(|a| a == "--")
        .ok_or("sandbox run: put the command after --")?;
    let (options, command) = (&rest[..split], &rest[split + 1..]);
    let a = Args::parse(options)?;
    a.only(&["-c", "--conf", "--workspace", "--timeout"])?;
    if let Some(w) = a.words.first() {
        return Err(format!("sandbox run: unexpected {w:?} before --"));
    }
    let line = match command {
        [] => return Err("sandbox run: no command after --".into()),
        [one] => one.clone(),
        many => many
            .iter()
            .map(|w| shell_quote(w))
            .collect::<Vec<_>>()
            .join(" "),
    };
    let config = Config::load_for_store(a.get("-c").or(a.get("--conf")))
        .map_err(|errors| format!("invalid configuration\n{errors}"))?;
    let sandbox = &config.sandbox;
    let workspace = match a.get("--workspace") {
        Some(dir) => {
            let dir = std::path::PathBuf::from(dir);
            crate::sandbox::prepare_workspace(sandbox, &dir).map_err(|e| e.to_string())?;
            dir
        }
        None => crate::sandbox::new_workspace(sandbox).map_err(|e| e.to_string())?,
    };
    let timeout = a.number("--timeout")?.map(std::time::Duration::from_secs);
    let outcome =
        crate::sandbox::run(sandbox, &workspace, &line, timeout).map_err(|e| e.to_string())?;
    use std::io::Write;
    let _ = std::io::stdout().write_all(outcome.stdout.text().as_bytes());
    let _ = std::io::stderr().write_all(outcome.stderr.text().as_bytes());
    if outcome.timed_out {
        eprintln!(
            "lynkr: sandbox: the command ran past its {} ms and was killed",
            timeout.map_or(sandbox.timeout_ms, |t| t.as_millis() as u64)
        );
    }
    Ok(outcome.code)
}

/// `word` as one shell word: single-quoted unless plainly safe.
fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

pub const POLICY_HELP: &str = "\
Usage: lynkr policy check [-c FILE] 'COMMAND LINE'

Prints `allow: WHY` (exit 0) or `deny: WHY` (exit 1) for the line under the
configuration's sandbox.policy (isolate or allowlist), sandbox.commands and
sandbox.commands_file: the rule that decided, or the construct that could
not be proven safe.
";

/// `lynkr policy ...`: exit status.
pub fn policy(args: &[String]) -> i32 {
    let run = || -> Result<i32, String> {
        match args.first().map(String::as_str) {
            Some("check") => {}
            Some("help" | "--help" | "-h") => {
                print!("{POLICY_HELP}");
                return Ok(0);
            }
            _ => {
                eprint!("{POLICY_HELP}");
                return Err("policy: which command? (check)".into());
            }
        }
        let a = Args::parse(&args[1..])?;
        a.only(&["-c", "--conf"])?;
        let [line] = a.words.as_slice() else {
            return Err("policy check: give the command line as one argument".into());
        };
        let config = Config::load_for_store(a.get("-c").or(a.get("--conf")))
            .map_err(|errors| format!("invalid configuration\n{errors}"))?;
        let policy = crate::sandbox::policy::Policy::from_config(&config.sandbox)?;
        Ok(match policy.decide(line) {
            crate::sandbox::policy::Decision::Allow(why) => {
                println!("allow: {why}");
                0
            }
            crate::sandbox::policy::Decision::Deny(why) => {
                println!("deny: {why}");
                1
            }
        })
    };
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lynkr: {e}");
            2
        }
    }
}

/// `lynkr usage ...`: exit status.
pub fn usage(args: &[String]) -> i32 {
    report(run_usage(args))
}

fn report(r: Result<(), String>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("lynkr: {e}");
            2
        }
    }
}

/// The store named by the configuration (`-c`, else the embedded default,
/// with the environment's overrides). Only the store settings are read, so
/// provider keys need not be set where the command runs.
fn open_store(a: &Args) -> Result<rusqlite::Connection, String> {
    let config = Config::load_for_store(a.get("-c").or(a.get("--conf")))
        .map_err(|errors| format!("invalid configuration\n{errors}"))?;
    if config.store.path.is_empty() {
        return Err("no store: set store.path in the configuration, or LYNKR_DB_PATH".into());
    }
    crate::store::open(&config.store.path)
}

const SPEC_FLAGS: &[&str] = &[
    "-c",
    "--conf",
    "--user",
    "--team",
    "--models",
    "--rpm",
    "--tpm",
    "--max-in-flight",
    "--expires",
];

fn spec(a: &Args) -> Result<KeySpec, String> {
    Ok(KeySpec {
        user: a.get("--user").map(str::to_owned),
        team: a.get("--team").map(str::to_owned),
        models: a.get("--models").map(|m| {
            m.split(',')
                .map(str::trim)
                .filter(|g| !g.is_empty())
                .map(str::to_owned)
                .collect()
        }),
        rpm: a.number("--rpm")?,
        max_in_flight: a.number("--max-in-flight")?,
        tpm: a.number("--tpm")?,
        expires_at: a.get("--expires").map(date::parse_utc).transpose()?,
    })
}

fn run_keys(args: &[String]) -> Result<(), String> {
    let Some((command, rest)) = args.split_first() else {
        eprint!("{KEYS_HELP}");
        return Err("keys: which command?".into());
    };
    let a = Args::parse(rest)?;
    match command.as_str() {
        "create" => {
            a.only(&[SPEC_FLAGS, &["--name"], KEY_BUDGET_FLAGS].concat())?;
            let name = a.get("--name").ok_or("keys create: --name is required")?;
            let budget_specs = key_budgets(&a, name)?;
            let conn = open_store(&a)?;
            // The key and its budgets together, or neither.
            let tx = conn.unchecked_transaction().map_err(|e| e.to_string())?;
            let (key, secret) = keys::create(&tx, name, &spec(&a)?)?;
            for b in &budget_specs {
                budgets::set(&tx, b)?;
            }
            tx.commit().map_err(|e| e.to_string())?;
            eprintln!(
                "created key {:?} for user {:?}; it is shown only now",
                key.name, key.user
            );
            println!("{secret}");
            Ok(())
        }
        "list" => {
            a.only(&["-c", "--conf", "--json"])?;
            let list = keys::list(&open_store(&a)?)?;
            if a.has("--json") {
                let json: Vec<_> = list.iter().map(ApiKey::to_json).collect();
                println!("{}", serde_json::Value::Array(json));
            } else {
                print_keys(&list);
            }
            Ok(())
        }
        "update" => {
            a.only(SPEC_FLAGS)?;
            let name = one_name(&a, "update")?;
            let key = keys::update(&open_store(&a)?, name, &spec(&a)?)?;
            eprintln!("updated key {:?}", key.name);
            Ok(())
        }
        "revoke" => {
            a.only(&["-c", "--conf"])?;
            let name = one_name(&a, "revoke")?;
            keys::revoke(&open_store(&a)?, name)?;
            eprintln!("revoked key {name:?}");
            Ok(())
        }
        "help" | "--help" | "-h" => {
            print!("{KEYS_HELP}");
            Ok(())
        }
        other => {
            eprint!("{KEYS_HELP}");
            Err(format!("keys: unknown command {other:?}"))
        }
    }
}

const KEY_BUDGET_FLAGS: &[&str] = &[
    "--budget-usd",
    "--budget-tokens",
    "--budget-requests",
    "--period",
];

/// The budgets `keys create --budget-*` asks for.
fn key_budgets(a: &Args, name: &str) -> Result<Vec<BudgetSpec>, String> {
    let period = Period::parse(a.get("--period").unwrap_or("month"))?;
    let mut specs = Vec::new();
    for (flag, metric) in [
        ("--budget-usd", Metric::Usd),
        ("--budget-tokens", Metric::Tokens),
        ("--budget-requests", Metric::Requests),
    ] {
        if let Some(v) = a.get(flag) {
            let hard = limit(flag, v, metric)?;
            budgets::check_limits(hard, None)?;
            specs.push(BudgetSpec {
                scope: Scope::Key,
                subject: name.to_string(),
                metric,
                period,
                hard,
                soft: None,
            });
        }
    }
    if specs.is_empty() && a.has("--period") {
        return Err(
            "--period applies to --budget-usd, --budget-tokens or --budget-requests".into(),
        );
    }
    Ok(specs)
}

/// A limit: USD may have cents; tokens and requests are whole numbers.
fn limit(flag: &str, v: &str, metric: Metric) -> Result<f64, String> {
    let bad = || format!("{flag} {v:?}: not a limit");
    match metric {
        Metric::Usd => v.parse::<f64>().map_err(|_| bad()),
        Metric::Tokens | Metric::Requests => v.parse::<u64>().map(|n| n as f64).map_err(|_| bad()),
    }
}

fn run_budgets(args: &[String]) -> Result<(), String> {
    let Some((command, rest)) = args.split_first() else {
        eprint!("{BUDGETS_HELP}");
        return Err("budgets: which command?".into());
    };
    let a = Args::parse(rest)?;
    match command.as_str() {
        "set" => {
            a.only(&[
                "-c",
                "--conf",
                "--key",
                "--user",
                "--team",
                "--usd",
                "--tokens",
                "--requests",
                "--period",
                "--soft",
            ])?;
            let subjects: Vec<_> = [
                ("--key", Scope::Key),
                ("--user", Scope::User),
                ("--team", Scope::Team),
            ]
            .into_iter()
            .filter_map(|(f, s)| a.get(f).map(|v| (s, v)))
            .collect();
            let [(scope, subject)] = subjects[..] else {
                return Err("budgets set: give one of --key, --user or --team".into());
            };
            let metrics: Vec<_> = [
                ("--usd", Metric::Usd),
                ("--tokens", Metric::Tokens),
                ("--requests", Metric::Requests),
            ]
            .into_iter()
            .filter_map(|(f, m)| a.get(f).map(|v| limit(f, v, m).map(|l| (m, l))))
            .collect::<Result<_, _>>()?;
            let [(metric, hard)] = metrics[..] else {
                return Err("budgets set: give one of --usd, --tokens or --requests".into());
            };
            let soft = a
                .get("--soft")
                .map(|v| limit("--soft", v, metric))
                .transpose()?;
            let conn = open_store(&a)?;
            if scope == Scope::Key && keys::get(&conn, subject)?.is_none() {
                return Err(format!("budgets set: no key named {subject:?}"));
            }
            let b = budgets::set(
                &conn,
                &BudgetSpec {
                    scope,
                    subject: subject.to_string(),
                    metric,
                    period: Period::parse(a.get("--period").unwrap_or("month"))?,
                    hard,
                    soft,
                },
            )?;
            eprintln!("budget {}: {} (id {})", b.label(), b.hard, b.id);
            Ok(())
        }
        "list" => {
            a.only(&["-c", "--conf", "--json"])?;
            let conn = open_store(&a)?;
            let now = keys::now_secs();
            let mut rows = Vec::new();
            for b in budgets::list(&conn)? {
                let start = b.period.start(now);
                let spent = budgets::spent_since(&conn, &b, start).map_err(|e| e.to_string())?;
                rows.push((b.to_json(spent, now), b, spent));
            }
            if a.has("--json") {
                let json: Vec<_> = rows.into_iter().map(|(j, _, _)| j).collect();
                println!("{}", serde_json::Value::Array(json));
                return Ok(());
            }
            println!(
                "{:>4} {:<5} {:<20} {:<9} {:<6} {:>14} {:>14} {:>14}",
                "ID", "SCOPE", "SUBJECT", "METRIC", "PERIOD", "LIMIT", "SOFT", "SPENT"
            );
            for (_, b, spent) in rows {
                println!(
                    "{:>4} {:<5} {:<20} {:<9} {:<6} {:>14} {:>14} {:>14.4}",
                    b.id,
                    b.scope.as_str(),
                    b.subject,
                    b.metric.as_str(),
                    b.period.as_str(),
                    b.hard,
                    b.soft.map_or_else(|| "-".to_string(), |s| s.to_string()),
                    spent
                );
            }
            Ok(())
        }
        "delete" => {
            a.only(&["-c", "--conf"])?;
            let id = match a.words.as_slice() {
                [id] => id
                    .parse::<i64>()
                    .map_err(|_| format!("budgets delete: {id:?} is not a budget id"))?,
                _ => return Err("budgets delete: name the budget by its id, once".into()),
            };
            budgets::delete(&open_store(&a)?, id)?;
            eprintln!("deleted budget {id}");
            Ok(())
        }
        "help" | "--help" | "-h" => {
            print!("{BUDGETS_HELP}");
            Ok(())
        }
        other => {
            eprint!("{BUDGETS_HELP}");
            Err(format!("budgets: unknown command {other:?}"))
        }
    }
}

fn one_name<'a>(a: &'a Args, command: &str) -> Result<&'a str, String> {
    match a.words.as_slice() {
        [name] => Ok(name),
        _ => Err(format!("keys {command}: name the key, once")),
    }
}

fn print_keys(list: &[ApiKey]) {
    println!(
        "{:<20} {:<10} {:<14} {:<10} {:<20} {:>6} {:>9} {:>9} {:<21} {:<8}",
        "NAME", "PREFIX", "USER", "TEAM", "MODELS", "RPM", "TPM", "IN-FLIGHT", "EXPIRES", "STATE"
    );
    let now = keys::now_secs();
    for k in list {
        let opt = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
        let state = if k.disabled {
            "revoked"
        } else if k.expires_at.is_some_and(|t| now >= t) {
            "expired"
        } else {
            "active"
        };
        println!(
            "{:<20} {:<10} {:<14} {:<10} {:<20} {:>6} {:>9} {:>9} {:<21} {:<8}",
            k.name,
            k.prefix,
            k.user,
            k.team.as_deref().unwrap_or("-"),
            if k.models.is_empty() {
                "*".to_string()
            } else {
                k.models.join(",")
            },
            opt(k.rpm),
            opt(k.tpm),
            opt(k.max_in_flight),
            k.expires_at
                .map_or_else(|| "never".to_string(), date::format_utc),
            state
        );
    }
}

fn run_usage(args: &[String]) -> Result<(), String> {
    if matches!(
        args.first().map(String::as_str),
        Some("help" | "--help" | "-h")
    ) {
        print!("{USAGE_HELP}");
        return Ok(());
    }
    let a = Args::parse(args)?;
    a.only(&["-c", "--conf", "--key", "--since", "--by", "--json"])?;
    if let Some(w) = a.words.first() {
        return Err(format!("usage: unexpected {w:?}"));
    }
    let by = GroupBy::parse(a.get("--by").unwrap_or("day"))?;
    let filter = Filter {
        key: a.get("--key").map(str::to_owned),
        since_ms: a
            .get("--since")
            .map(|s| date::parse_utc(s).map(|t| t * 1000))
            .transpose()?,
    };
    let sums = usage::summarize(&open_store(&a)?, by, &filter).map_err(|e| e.to_string())?;
    if a.has("--json") {
        println!(
            "{}",
            serde_json::to_string(&sums).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    println!(
        "{:<36} {:>9} {:>14} {:>14} {:>12} {:>7}",
        "GROUP", "REQUESTS", "INPUT", "OUTPUT", "COST (USD)", "ERRORS"
    );
    for s in &sums {
        println!(
            "{:<36} {:>9} {:>14} {:>14} {:>12.6} {:>7}",
            if s.group.is_empty() { "-" } else { &s.group },
            s.requests,
            s.input_tokens,
            s.output_tokens,
            s.cost,
            s.errors
        );
    }
    Ok(())
}
