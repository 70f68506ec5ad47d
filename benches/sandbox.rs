//! What the namespace sandbox costs a command: start-up and teardown of
//! `true` (the init's exec, the namespaces, the root's mounts, the pivot,
//! the command's fork and exec, and the namespace's end), and of a short
//! shell pipeline. Runs the built lynkr binary's init, as the gateway does.

use criterion::{criterion_group, criterion_main, Criterion};
use lynkr::config::SandboxConfig;
use std::path::Path;

fn sandbox(c: &mut Criterion) {
    let init = Path::new(env!("CARGO_BIN_EXE_lynkr"));
    let config = SandboxConfig::default();
    let workspace = lynkr::sandbox::new_workspace(&config).expect("a workspace");
    let mut group = c.benchmark_group("sandbox");
    group.sample_size(30);
    for (name, command) in [
        ("true", "true"),
        ("pipeline", "echo hello | tr a-z A-Z | wc -c"),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let out = lynkr::sandbox::run_with(init, &config, &workspace, command, None)
                    .expect("the sandbox runs");
                assert_eq!(out.code, 0);
                out
            })
        });
    }
    group.finish();
    let _ = std::fs::remove_dir_all(&workspace);
}

criterion_group!(benches, sandbox);
criterion_main!(benches);
