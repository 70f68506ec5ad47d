//! `lynkr [run] [-c FILE] [-u] [-d] [-t]` runs the gateway (Pingora's
//! flags); the other subcommands (`check-config`, `keys`, `usage`) are in
//! `lynkr::cli`. `lynkr help` lists them.

use lynkr::config::Config;
use pingora_core::server::configuration::Opt;

/// jemalloc rather than glibc's malloc: measured 84 -> 65 µs of CPU a
/// 22.5 KB request at c=32, and a lower peak under 1,000 streams (README,
/// Performance). `gateway::trim` gives its free pages back when idle.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let mut args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("check-config") => std::process::exit(check_config(args.get(2).map(String::as_str))),
        Some("keys") => std::process::exit(lynkr::cli::keys(&args[2..])),
        Some("usage") => std::process::exit(lynkr::cli::usage(&args[2..])),
        Some("budgets") => std::process::exit(lynkr::cli::budgets(&args[2..])),
        Some("sandbox") => std::process::exit(lynkr::cli::sandbox(&args[2..])),
        Some("policy") => std::process::exit(lynkr::cli::policy(&args[2..])),
        // Internal: the sandbox's init, started by `sandbox::run`.
        Some(lynkr::sandbox::INIT_COMMAND) => lynkr::sandbox::init::main(),
        Some("help" | "--help" | "-h") => {
            print!("{}", lynkr::cli::HELP);
            return;
        }
        Some("run") => {
            args.remove(1);
        }
        Some(other) if !other.starts_with('-') => {
            eprint!("{}", lynkr::cli::HELP);
            eprintln!("lynkr: unknown command {other:?}");
            std::process::exit(2);
        }
        _ => {}
    }
    let opt = Opt::parse_from_args(&args);
    let config = match Config::load(opt.conf.as_deref()) {
        Ok(c) => c,
        Err(errors) => {
            eprint!("lynkr: invalid configuration\n{errors}");
            std::process::exit(1);
        }
    };
    lynkr::logging::init(&config.logging);
    tracing::info!(listen = ?config.server.listen, config = opt.conf.as_deref().unwrap_or("<embedded default>"), "starting lynkr");
    match lynkr::server::build(&config, opt) {
        Ok(server) => server.run_forever(),
        Err(e) => {
            eprintln!("lynkr: {e}");
            std::process::exit(1);
        }
    }
}

/// Print every problem with its path; exit status 1 when any.
fn check_config(path: Option<&str>) -> i32 {
    match Config::load(path) {
        Ok(_) => {
            println!("{}: ok", path.unwrap_or("<embedded default>"));
            0
        }
        Err(errors) => {
            print!("{errors}");
            1
        }
    }
}
