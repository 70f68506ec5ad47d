//! Load shedding: too many requests in flight, or too much resident memory,
//! and a new request gets 529 `overloaded_error`.
//!
//! A request is checked before its body is read (`check`: refused at once,
//! nothing read) and counted in flight only once its body has arrived
//! (`admit`), so clients that send their bodies slowly hold no slot: they
//! are bounded by `timeouts.client_read_ms` and the body budget instead.

use crate::config::SheddingConfig;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Resident memory is read from /proc at most this often.
const RSS_SAMPLE_MS: u64 = 250;

#[derive(Debug)]
pub struct Shedder {
    max_in_flight: usize,
    background_limit: usize,
    max_rss: u64,
    pub retry_after_secs: u64,
    in_flight: Arc<AtomicUsize>,
    rss: AtomicU64,
    rss_sampled_ms: AtomicU64,
    started: Instant,
}

/// Why a request was shed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    InFlight,
    Memory,
    Background,
}

/// Counts a request as in flight until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Shedder {
    pub fn new(c: &SheddingConfig) -> Self {
        let max_rss = if c.max_memory <= 0.0 {
            0
        } else if c.max_memory <= 1.0 {
            (c.max_memory * memory_limit() as f64) as u64
        } else {
            c.max_memory as u64
        };
        Shedder {
            max_in_flight: c.max_in_flight,
            background_limit: (c.max_in_flight as f64 * c.background_share) as usize,
            max_rss,
            retry_after_secs: c.retry_after_secs,
            in_flight: Arc::new(AtomicUsize::new(0)),
            rss: AtomicU64::new(0),
            rss_sampled_ms: AtomicU64::new(u64::MAX),
            started: Instant::now(),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether a new request may start now (nothing is counted).
    pub fn check(&self) -> Result<(), Shed> {
        if self.max_in_flight > 0 && self.in_flight() >= self.max_in_flight {
            return Err(Shed::InFlight);
        }
        if self.max_rss > 0 && self.rss() > self.max_rss {
            return Err(Shed::Memory);
        }
        Ok(())
    }

    /// Admit a request (counting it in flight) or shed it.
    pub fn admit(&self) -> Result<InFlight, Shed> {
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        let guard = InFlight(self.in_flight.clone());
        if self.max_in_flight > 0 && now > self.max_in_flight {
            return Err(Shed::InFlight);
        }
        if self.max_rss > 0 && self.rss() > self.max_rss {
            return Err(Shed::Memory);
        }
        Ok(guard)
    }

    /// Background requests are shed earlier, once in-flight requests pass
    /// `background_share` of the limit, to keep room for the main loop.
    pub fn admit_background(&self) -> Result<(), Shed> {
        if self.max_in_flight > 0 && self.in_flight() > self.background_limit {
            return Err(Shed::Background);
        }
        Ok(())
    }

    /// Resident set size in bytes, sampled at most every `RSS_SAMPLE_MS`.
    pub fn rss(&self) -> u64 {
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.rss_sampled_ms.load(Ordering::Relaxed);
        if last == u64::MAX || now.saturating_sub(last) >= RSS_SAMPLE_MS {
            self.rss_sampled_ms.store(now, Ordering::Relaxed);
            self.rss.store(read_rss(), Ordering::Relaxed);
        }
        self.rss.load(Ordering::Relaxed)
    }

    pub fn max_rss(&self) -> u64 {
        self.max_rss
    }
}

/// Resident memory of this process, from /proc/self/statm.
pub fn read_rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * page_size())
}

fn page_size() -> u64 {
    use nix::unistd::{sysconf, SysconfVar};
    static PAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| match sysconf(SysconfVar::PAGE_SIZE) {
        Ok(Some(n)) if n > 0 => n as u64,
        _ => 4096,
    })
}

/// The memory this process may use: its cgroup's limit (v2 `memory.max`,
/// v1 `memory.limit_in_bytes`) when it has one, else the machine's.
pub fn memory_limit() -> u64 {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    memory_limit_from(
        &read("/proc/meminfo").unwrap_or_default(),
        &read("/proc/self/cgroup").unwrap_or_default(),
        &|path| read(&format!("/sys/fs/cgroup{path}")),
    )
}

/// `memory_limit` over given file contents; `cgroup_file` reads a path
/// under `/sys/fs/cgroup`.
fn memory_limit_from(
    meminfo: &str,
    proc_cgroup: &str,
    cgroup_file: &dyn Fn(&str) -> Option<String>,
) -> u64 {
    let total = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(u64::MAX, |kb| kb * 1024);
    // Candidate files: the process's own cgroup, then the root of the
    // cgroup namespace (a container sees its limit there).
    let mut candidates = Vec::new();
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next(), parts.next());
        let (Some(controllers), Some(path)) = (controllers, path) else {
            continue;
        };
        let path = path.trim_end_matches('/');
        if controllers.is_empty() {
            candidates.push(format!("{path}/memory.max"));
            candidates.push("/memory.max".to_string());
        } else if controllers.split(',').any(|c| c == "memory") {
            candidates.push(format!("/memory{path}/memory.limit_in_bytes"));
            candidates.push("/memory/memory.limit_in_bytes".to_string());
        }
    }
    let cgroup = candidates
        .iter()
        .filter_map(|f| cgroup_file(f))
        .filter_map(|v| v.trim().parse::<u64>().ok())
        .min()
        .unwrap_or(u64::MAX);
    let limit = total.min(cgroup);
    if limit == u64::MAX {
        0
    } else {
        limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheds_over_the_in_flight_limit_and_counts_down() {
        let s = Shedder::new(&SheddingConfig {
            max_in_flight: 2,
            background_share: 0.5,
            ..Default::default()
        });
        let a = s.admit().unwrap();
        // one in flight: background still admitted (limit 1 is not passed)
        assert!(s.admit_background().is_ok());
        let b = s.admit().unwrap();
        assert_eq!(s.admit_background(), Err(Shed::Background));
        assert_eq!(s.admit().unwrap_err(), Shed::InFlight);
        assert_eq!(s.in_flight(), 2, "a refused request is not counted");
        drop((a, b));
        assert_eq!(s.in_flight(), 0);
        assert!(s.admit().is_ok());
    }

    #[test]
    fn check_refuses_at_the_limit_without_counting() {
        let s = Shedder::new(&SheddingConfig {
            max_in_flight: 1,
            max_memory: 0.0,
            ..Default::default()
        });
        assert!(s.check().is_ok());
        let held = s.admit().unwrap();
        assert_eq!(s.check(), Err(Shed::InFlight));
        assert_eq!(s.in_flight(), 1);
        drop(held);
        assert!(s.check().is_ok());
    }

    /// Regression: a share of memory was taken of MemTotal, so in a
    /// container with a cgroup limit it never tripped.
    #[test]
    fn the_memory_limit_is_the_cgroup_one() {
        let meminfo = "MemTotal:       25165824 kB\nMemFree: 1 kB\n";
        let files = |path: &str| -> Option<String> {
            match path {
                "/kubepods/pod1/memory.max" => Some("2147483648\n".into()),
                "/memory.max" => Some("max\n".into()),
                "/memory/docker/abc/memory.limit_in_bytes" => Some("1073741824\n".into()),
                "/memory/memory.limit_in_bytes" => Some("9223372036854771712\n".into()),
                _ => None,
            }
        };
        // cgroup v2
        assert_eq!(
            memory_limit_from(meminfo, "0::/kubepods/pod1\n", &files),
            2 << 30
        );
        // cgroup v1 (the memory controller among others)
        let v1 = "12:pids:/docker/abc\n4:memory:/docker/abc\n1:name=systemd:/docker/abc\n";
        assert_eq!(memory_limit_from(meminfo, v1, &files), 1 << 30);
        // No limit ("max", or v1's huge value): the machine's memory.
        assert_eq!(
            memory_limit_from(meminfo, "0::/\n", &files),
            25165824 * 1024
        );
        assert_eq!(memory_limit_from(meminfo, "", &files), 25165824 * 1024);
        assert_eq!(memory_limit_from("", "", &files), 0);
        assert!(page_size() >= 4096);
    }

    #[test]
    fn sheds_over_the_memory_limit() {
        let s = Shedder::new(&SheddingConfig {
            max_memory: 1024.0 * 1024.0,
            ..Default::default()
        });
        assert!(read_rss() > 1024 * 1024);
        assert_eq!(s.admit().unwrap_err(), Shed::Memory);
        let share = Shedder::new(&SheddingConfig {
            max_memory: 0.99,
            ..Default::default()
        });
        assert!(share.max_rss() > 0);
        assert!(share.admit().is_ok());
    }
}
