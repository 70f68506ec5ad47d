//! `sandbox:`: how commands run in namespace-isolated child processes
//! (`src/sandbox/`), and the limits each command gets.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxConfig {
    /// Where workspaces live (`WORKSPACE_ROOT`); empty: `lynkr-workspaces`
    /// in the system's temporary directory.
    pub workspace_root: String,
    /// Wall-clock limit of one command, milliseconds (`MCP_SANDBOX_TIMEOUT_MS`).
    /// At its end the command's whole PID namespace is killed.
    pub timeout_ms: u64,
    /// CPU seconds a command may use (RLIMIT_CPU).
    pub cpu_seconds: u64,
    /// Address space of each process, bytes (RLIMIT_AS; `MCP_SANDBOX_MEMORY_LIMIT`).
    pub memory_bytes: u64,
    /// Processes (and threads) at once (RLIMIT_NPROC; `MCP_SANDBOX_PIDS_LIMIT`).
    pub pids: u64,
    /// Largest file a command may write, bytes (RLIMIT_FSIZE).
    pub file_size_bytes: u64,
    /// Open files per process (RLIMIT_NOFILE).
    pub open_files: u64,
    /// stdout and stderr are each kept up to this many bytes; the rest is
    /// counted and dropped, with a truncation marker.
    pub output_bytes: usize,
    /// Size of the command's own `/tmp` (a tmpfs), bytes.
    pub tmp_bytes: u64,
    /// Host paths bound read-only into the sandbox's root (absent ones are
    /// skipped; a symlink such as `/bin -> usr/bin` is recreated as one).
    pub ro_binds: Vec<String>,
    /// The host uid and gid commands run as when Lynkr runs as root (as
    /// the sandbox's uid 1000). An unprivileged Lynkr maps its own.
    pub uid: u32,
    pub gid: u32,
    /// `isolate` (anything runs, contained) or `allowlist` (only what
    /// `commands` allows; `POLICY_SAFE_COMMANDS_ENABLED=true`).
    pub policy: crate::sandbox::policy::Mode,
    /// Allow and deny rules over parsed commands: `{allow: "git status"}`,
    /// `{deny: "git push --force*"}`.
    pub commands: Vec<crate::sandbox::policy::Rule>,
    /// A YAML (or JSON) file with more rules, in the same form
    /// (`POLICY_SAFE_COMMANDS_CONFIG`); empty: none.
    pub commands_file: String,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            workspace_root: String::new(),
            timeout_ms: 30_000,
            cpu_seconds: 30,
            memory_bytes: 1 << 30,
            pids: 64,
            file_size_bytes: 100 << 20,
            open_files: 256,
            output_bytes: 1 << 20,
            tmp_bytes: 64 << 20,
            ro_binds: [
                "/usr",
                "/bin",
                "/sbin",
                "/lib",
                "/lib64",
                "/etc/alternatives",
            ]
            .map(String::from)
            .to_vec(),
            uid: 65534,
            gid: 65534,
            policy: crate::sandbox::policy::Mode::Isolate,
            commands: Vec::new(),
            commands_file: String::new(),
        }
    }
}

impl SandboxConfig {
    /// The workspace root, with its default.
    pub fn workspace_root(&self) -> std::path::PathBuf {
        match self.workspace_root.is_empty() {
            true => std::env::temp_dir().join("lynkr-workspaces"),
            false => self.workspace_root.clone().into(),
        }
    }
}

/// `512m`, `1g`, `65536k` or plain bytes (the original Lynkr's
/// `MCP_SANDBOX_MEMORY_LIMIT` form).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?}: expected bytes, such as 536870912 or 512m");
    let t = s.trim().to_ascii_lowercase();
    let (digits, shift) = match t.as_bytes().last() {
        Some(b'k') => (&t[..t.len() - 1], 10),
        Some(b'm') => (&t[..t.len() - 1], 20),
        Some(b'g') => (&t[..t.len() - 1], 30),
        _ => (t.as_str(), 0),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?}: too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_in_the_original_form() {
        assert_eq!(parse_bytes("512m"), Ok(512 << 20));
        assert_eq!(parse_bytes("1G"), Ok(1 << 30));
        assert_eq!(parse_bytes("64k"), Ok(64 << 10));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        for bad in ["", "m", "-1", "1.5g", "99999999999999999999g", "1t"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }
}
