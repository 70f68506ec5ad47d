//! Commands in namespace-isolated child processes.
//!
//! `run` starts `lynkr __sandbox-init` (this same binary, as a fresh
//! single-threaded process: `init.rs`), hands it the command and its
//! limits, and collects stdout and stderr, each capped, and the exit
//! status. The init builds the namespaces and the root and enforces the
//! deadline; `run` keeps a watchdog of its own a little past it.
//!
//! Nothing falls back to running a command unsandboxed: when namespaces
//! cannot be made, the answer is an error saying why.

pub mod editor;
pub mod init;
pub mod policy;
pub mod shell;

use crate::config::SandboxConfig;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The hidden subcommand the init runs as.
pub const INIT_COMMAND: &str = "__sandbox-init";
/// How long past the deadline `run` waits before killing the init itself.
const WATCHDOG_GRACE: Duration = Duration::from_secs(3);

/// What the init is told: the command, the workspace, every limit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    pub command: String,
    /// Host path bound read-write at `/workspace`.
    pub workspace: String,
    /// An empty host directory the sandbox's root tmpfs is mounted on
    /// (inside its own mount namespace).
    pub root_dir: String,
    /// The deadline of this command (`sandbox.timeout_ms`, or the caller's).
    pub timeout_ms: u64,
    /// The limits, binds and ids.
    pub settings: SandboxConfig,
}

/// The init's one-line report on fd 3.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub code: Option<i32>,
    #[serde(default)]
    pub timed_out: bool,
    pub error: Option<String>,
}

/// What a command did.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The command's exit status (128 + N when killed by signal N; 124
    /// when the deadline killed it).
    pub code: i32,
    pub timed_out: bool,
    pub stdout: Captured,
    pub stderr: Captured,
    pub duration: Duration,
}

/// One output stream, kept up to a cap.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Captured {
    pub bytes: Vec<u8>,
    /// Bytes past the cap, counted and dropped.
    pub dropped: u64,
}

impl Captured {
    /// The text, with a marker saying how much was cut.
    pub fn text(&self) -> String {
        let mut s = String::from_utf8_lossy(&self.bytes).into_owned();
        if self.dropped > 0 {
            s.push_str(&format!(
                "\n[output truncated: {} more bytes]\n",
                self.dropped
            ));
        }
        s
    }
}

/// Why a command could not be run (never: why it failed; that is its status).
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxError(pub String);

impl std::fmt::Display for SandboxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sandbox: {}", self.0)
    }
}

/// The directory each sandbox's root tmpfs is mounted on: empty, made once.
fn root_dir() -> Result<PathBuf, SandboxError> {
    let dir = std::env::temp_dir().join("lynkr-sandbox-root");
    std::fs::create_dir_all(&dir)
        .map_err(|e| SandboxError(format!("cannot make {}: {e}", dir.display())))?;
    Ok(dir)
}

/// A fresh workspace under the configured root, owned by the sandbox's
/// user (what `lynkr sandbox run` uses without `--workspace`).
pub fn new_workspace(config: &SandboxConfig) -> Result<PathBuf, SandboxError> {
    let root = config.workspace_root();
    let dir = root.join(format!("ws_{:016x}", crate::util::unique_id()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| SandboxError(format!("cannot make {}: {e}", dir.display())))?;
    prepare_workspace(config, &dir)?;
    Ok(dir)
}

/// When Lynkr runs as root, commands run as `sandbox.uid`: the workspace
/// (the directory itself) must be theirs to write.
pub fn prepare_workspace(config: &SandboxConfig, dir: &Path) -> Result<(), SandboxError> {
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::chown(dir, Some(config.uid), Some(config.gid)).map_err(|e| {
            SandboxError(format!("cannot hand {} to the sandbox: {e}", dir.display()))
        })?;
    }
    Ok(())
}

/// Run `command` (a `/bin/sh -c` line) in a sandbox on `workspace`, with
/// `timeout` in place of the configured one when given. Blocks: call it
/// from a blocking thread.
pub fn run(
    config: &SandboxConfig,
    workspace: &Path,
    command: &str,
    timeout: Option<Duration>,
) -> Result<Outcome, SandboxError> {
    let exe = std::env::current_exe()
        .map_err(|e| SandboxError(format!("cannot find the lynkr binary: {e}")))?;
    run_with(&exe, config, workspace, command, timeout)
}

/// As `run`, with `init` as the lynkr binary that runs the sandbox's init
/// (for benchmarks, whose own binary is not lynkr).
pub fn run_with(
    init: &Path,
    config: &SandboxConfig,
    workspace: &Path,
    command: &str,
    timeout: Option<Duration>,
) -> Result<Outcome, SandboxError> {
    let started = Instant::now();
    let workspace = workspace
        .canonicalize()
        .map_err(|e| SandboxError(format!("workspace {}: {e}", workspace.display())))?;
    let timeout = timeout.unwrap_or(Duration::from_millis(config.timeout_ms));
    let spec = Spec {
        command: command.to_string(),
        workspace: workspace.display().to_string(),
        root_dir: root_dir()?.display().to_string(),
        timeout_ms: timeout.as_millis() as u64,
        settings: config.clone(),
    };
    let (report_read, report_write) =
        nix::unistd::pipe().map_err(|e| SandboxError(format!("pipe: {e}")))?;
    let report_fd = std::os::fd::AsRawFd::as_raw_fd(&report_write);
    let mut cmd = Command::new(init);
    cmd.arg(INIT_COMMAND)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: dup2 is async-signal-safe; it gives the init the report pipe
    // as fd 3 (dup2 clears close-on-exec on the copy).
    unsafe {
        cmd.pre_exec(move || {
            if nix::libc::dup2(report_fd, init::REPORT_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| SandboxError(format!("cannot start the sandbox init: {e}")))?;
    drop(report_write);
    let input = serde_json::to_vec(&spec).expect("the spec serializes");
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(&input)
            .map_err(|e| SandboxError(format!("handing over the command: {e}")))?;
    }
    let cap = config.output_bytes;
    let stdout = child.stdout.take().map(|s| capture(s, cap));
    let stderr = child.stderr.take().map(|s| capture(s, cap));
    let pid = child.id();
    // Woken at once when the init ends (the sender is dropped).
    let (ended, watch) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
            watch.recv_timeout(timeout + WATCHDOG_GRACE)
        {
            // The init did not end by its own deadline: kill it, and with
            // it (parent-death signal) the namespace.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    });
    let status = child.wait();
    drop(ended);
    let _ = watchdog.join();
    let mut text = String::new();
    let _ = std::fs::File::from(report_read).read_to_string(&mut text);
    let join = |h: Option<std::thread::JoinHandle<Captured>>| {
        h.map(|h| h.join().unwrap_or_default()).unwrap_or_default()
    };
    let (stdout, stderr) = (join(stdout), join(stderr));
    let status = status.map_err(|e| SandboxError(format!("waiting for the sandbox: {e}")))?;
    let reports: Vec<Report> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    if let Some(e) = reports.iter().find_map(|r| r.error.clone()) {
        return Err(SandboxError(e));
    }
    let Some(report) = reports.last() else {
        return Err(SandboxError(format!(
            "the sandbox init ended without a report ({status}): {}",
            String::from_utf8_lossy(&stderr.bytes)
        )));
    };
    Ok(Outcome {
        code: report.code.unwrap_or(125),
        timed_out: report.timed_out,
        stdout,
        stderr,
        duration: started.elapsed(),
    })
}

/// Read `stream` to its end on a thread of its own, keeping `cap` bytes.
/// Reading on past the cap keeps a flood from blocking the command.
fn capture(
    mut stream: impl Read + Send + 'static,
    cap: usize,
) -> std::thread::JoinHandle<Captured> {
    std::thread::spawn(move || {
        let mut out = Captured::default();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => return out,
                Ok(n) => {
                    let keep = n.min(cap.saturating_sub(out.bytes.len()));
                    out.bytes.extend_from_slice(&buf[..keep]);
                    out.dropped += (n - keep) as u64;
                }
            }
        }
    })
}

#[cfg(test)]
mod tests;
