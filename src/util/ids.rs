//! Identifiers: one generator for every id Lynkr makes up (request ids,
//! message ids, tool-use ids), unique across the process and hard to guess.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A process-unique, hard-to-guess 64-bit id.
pub fn unique_id() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    // getpid is a system call each time; the pid of a process never changes.
    static PID: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let pid = *PID.get_or_init(|| std::process::id() as u64);
    // splitmix64 over time, pid and counter.
    let mut z = t ^ pid.rotate_left(32) ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A tool-use id for a call the provider sent without one. A counter makes
/// it unique for the process's life (so a conversation never holds two
/// equal ids, whatever turn they came from); the random part keeps ids of
/// two processes (an upgrade, several replicas) apart.
pub fn tool_use_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("toolu_lynkr_{:012x}{n:x}", unique_id() >> 16)
}

/// A message id for a provider that gives none.
pub fn message_id() -> String {
    format!("msg_lynkr_{:016x}", unique_id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_use_ids_never_repeat() {
        let ids: std::collections::HashSet<String> = (0..10_000).map(|_| tool_use_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|i| i.starts_with("toolu_lynkr_")));
    }
}
