//! The sandbox's init: `lynkr __sandbox-init`, a fresh single-threaded
//! process (so fork and clone are safe), started by `sandbox::run`.
//!
//! 1. It reads the `Spec` from stdin, then points stdin at /dev/null.
//! 2. It clones a child into new user, mount, PID, network, IPC and UTS
//!    namespaces, and writes the child's uid and gid maps from outside
//!    (uid 1000 inside is the configured host uid).
//! 3. The child, PID 1 of its namespace, builds a root on a tmpfs (read-only
//!    binds, a minimal /etc and /dev, a fresh /proc, a tmpfs /tmp, the
//!    workspace), pivots into it, detaches the old root, remounts the root
//!    read-only, and forks the command (`/bin/sh -c`), which runs with
//!    rlimits, `no_new_privs`, its own session, no inherited descriptors
//!    and an explicit environment. PID 1 reaps whatever the command leaves
//!    and exits with its status; the kernel then kills everything left in
//!    the namespace, grandchildren included.
//! 4. This process kills PID 1 at the deadline, and reports on fd 3 one
//!    JSON line: the exit code, whether the deadline passed, or why the
//!    sandbox could not be built.

use super::{Report, Spec};
use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::{kill, Signal};
use nix::sys::statvfs::{statvfs, FsFlags};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{self, ForkResult, Pid};
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where `sandbox::run` puts the report pipe.
pub const REPORT_FD: i32 = 3;
/// The uid and gid commands have inside the sandbox.
pub const INSIDE_ID: u32 = 1000;
const STACK_BYTES: usize = 1 << 20;

/// `lynkr __sandbox-init`: never returns.
pub fn main() -> ! {
    // SAFETY: fd 3 is the report pipe `sandbox::run` set up for this process.
    let mut report = unsafe { std::fs::File::from_raw_fd(REPORT_FD) };
    let result = run();
    let line = match result {
        Ok(r) => r,
        Err(e) => Report {
            error: Some(e),
            ..Report::default()
        },
    };
    let _ = writeln!(
        report,
        "{}",
        serde_json::to_string(&line).unwrap_or_default()
    );
    std::process::exit(match (line.error.is_some(), line.timed_out) {
        (true, _) => 125,
        (_, true) => 124,
        _ => line.code.unwrap_or(125),
    });
}

fn run() -> Result<Report, String> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| format!("reading the sandbox spec: {e}"))?;
    let spec: Spec = serde_json::from_str(&input).map_err(|e| format!("sandbox spec: {e}"))?;
    let null = std::fs::File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
    unistd::dup2_stdin(&null).map_err(|e| format!("stdin: {e}"))?;

    let (outside_uid, outside_gid) = if unistd::geteuid().is_root() {
        (spec.settings.uid, spec.settings.gid)
    } else {
        (unistd::geteuid().as_raw(), unistd::getegid().as_raw())
    };
    // The child waits on `go` until its maps are written.
    let (go_read, go_write) = unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    let flags = CloneFlags::CLONE_NEWUSER
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS;
    let mut stack = vec![0u8; STACK_BYTES];
    let go_read_fd = go_read.as_raw_fd();
    let go_write_fd = go_write.as_raw_fd();
    let child_spec = spec.clone();
    // SAFETY: this process is single-threaded; the child gets its own copy
    // of memory (no CLONE_VM) and runs `pid1`, which ends in `_exit`.
    let child = unsafe {
        nix::sched::clone(
            Box::new(move || pid1(&child_spec, go_read_fd, go_write_fd)),
            &mut stack,
            flags,
            Some(Signal::SIGCHLD as i32),
        )
    }
    .map_err(|e| match e {
        Errno::EPERM | Errno::ENOSPC | Errno::EINVAL => format!(
            "cannot create the sandbox's namespaces ({e}): user namespaces may be \
             disabled (kernel.unprivileged_userns_clone, user.max_user_namespaces) or \
             forbidden by a seccomp profile; commands are refused rather than run unsandboxed"
        ),
        e => format!("clone: {e}"),
    })?;
    drop(go_read);
    let maps = write_maps(child, outside_uid, outside_gid);
    if let Err(e) = maps {
        let _ = kill(child, Signal::SIGKILL);
        let _ = waitpid(child, None);
        return Err(e);
    }
    let mut go = std::fs::File::from(go_write);
    go.write_all(b"g")
        .map_err(|e| format!("starting the sandbox: {e}"))?;
    drop(go);
    wait_with_deadline(child, Duration::from_millis(spec.timeout_ms))
}

/// The child's uid and gid maps, written from outside its namespace.
fn write_maps(child: Pid, uid: u32, gid: u32) -> Result<(), String> {
    let proc = PathBuf::from(format!("/proc/{child}"));
    let write = |name: &str, text: String| {
        std::fs::write(proc.join(name), text).map_err(|e| format!("writing {name}: {e}"))
    };
    write("setgroups", "deny".into())?;
    write("uid_map", format!("{INSIDE_ID} {uid} 1\n"))?;
    write("gid_map", format!("{INSIDE_ID} {gid} 1\n"))
}

/// Wait for PID 1; kill it at the deadline (which kills its namespace).
/// A pidfd wakes the wait the moment PID 1 ends.
fn wait_with_deadline(child: Pid, timeout: Duration) -> Result<Report, String> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let deadline = Instant::now() + timeout;
    // SAFETY: pidfd_open returns a new descriptor (or -1), owned here.
    let raw = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, child.as_raw(), 0) };
    if raw < 0 {
        return Err(format!("pidfd_open: {}", Errno::last()));
    }
    // SAFETY: `raw` is the descriptor pidfd_open just made.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
    loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(exited(code, false)),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(exited(128 + sig as i32, false)),
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(format!("waiting for the sandbox: {e}")),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let _ = kill(child, Signal::SIGKILL);
            let _ = waitpid(child, None);
            return Ok(exited(124, true));
        }
        let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(format!("poll: {e}")),
        }
    }
}

fn exited(code: i32, timed_out: bool) -> Report {
    Report {
        code: Some(code),
        timed_out,
        error: None,
    }
}

// ---- PID 1, inside the namespaces --------------------------------------------

/// Exit codes PID 1 uses for its own failures (the report says which step).
const SETUP_FAILED: isize = 125;

fn pid1(spec: &Spec, go_read: i32, go_write: i32) -> isize {
    // If the init dies, so does PID 1, and with it the namespace.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    // SAFETY: the child's copy of the write end, unused here.
    unsafe { nix::libc::close(go_write) };
    let mut byte = [0u8; 1];
    // SAFETY: the read end of the `go` pipe, owned by this child from here.
    let mut go = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(go_read) });
    if go.read_exact(&mut byte).is_err() {
        return SETUP_FAILED;
    }
    drop(go);
    if let Err(e) = become_inside_user() {
        fail(&format!("taking the sandbox's uid: {e}"));
        return SETUP_FAILED;
    }
    if let Err(e) = build_root(spec) {
        fail(&format!("building the sandbox: {e}"));
        return SETUP_FAILED;
    }
    let _ = unistd::sethostname("sandbox");
    // SAFETY: PID 1 is single-threaded (a copy of the single-threaded init).
    match unsafe { unistd::fork() } {
        Ok(ForkResult::Child) => {
            let e = exec_command(spec);
            fail(&format!("starting the command: {e}"));
            unsafe { nix::libc::_exit(127) }
        }
        Ok(ForkResult::Parent { child }) => reap_until(child),
        Err(e) => {
            fail(&format!("fork: {e}"));
            SETUP_FAILED
        }
    }
}

/// Become uid and gid 1000 of the namespace (the mapped host ids) while
/// keeping the namespace's capabilities for building the root: they are
/// dropped by the kernel at the command's exec (a non-root uid execs with
/// none), and `no_new_privs` keeps them from coming back.
fn become_inside_user() -> Result<(), String> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let id = INSIDE_ID;
    // SAFETY: prctl and set*id calls on this single-threaded process; the
    // capget/capset structures are laid out as the kernel's (version 3).
    unsafe {
        if nix::libc::prctl(nix::libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0 {
            return Err(format!("keepcaps: {}", Errno::last()));
        }
        if nix::libc::setresgid(id, id, id) != 0 {
            return Err(format!("setresgid: {}", Errno::last()));
        }
        if nix::libc::setresuid(id, id, id) != 0 {
            return Err(format!("setresuid: {}", Errno::last()));
        }
        let mut header = Header {
            version: VERSION_3,
            pid: 0,
        };
        let mut data = [Data::default(); 2];
        if nix::libc::syscall(nix::libc::SYS_capget, &mut header, data.as_mut_ptr()) != 0 {
            return Err(format!("capget: {}", Errno::last()));
        }
        for d in &mut data {
            d.effective = d.permitted;
            d.inheritable = 0;
        }
        if nix::libc::syscall(nix::libc::SYS_capset, &mut header, data.as_ptr()) != 0 {
            return Err(format!("capset: {}", Errno::last()));
        }
    }
    Ok(())
}

/// Tell the init why the sandbox failed (the report's `error`).
fn fail(message: &str) {
    // SAFETY: fd 3 is the report pipe; borrowed for one write, not closed.
    let mut f = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(REPORT_FD) });
    let line = serde_json::json!({"error": message}).to_string();
    let _ = writeln!(f, "{line}");
}

/// Reap every process that ends until `command` does; its status is ours.
fn reap_until(command: Pid) -> isize {
    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == command => return code as isize,
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == command => {
                return 128 + sig as isize;
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return SETUP_FAILED,
        }
    }
}

fn bad(step: &str, e: impl std::fmt::Display) -> String {
    format!("{step}: {e}")
}

fn mount_flags_of(path: &Path) -> MsFlags {
    // A bind remounted inside a user namespace must keep the flags its
    // source is locked with, or the kernel refuses the remount.
    let Ok(st) = statvfs(path) else {
        return MsFlags::empty();
    };
    let f = st.flags();
    let mut m = MsFlags::empty();
    for (fs, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(fs) {
            m |= ms;
        }
    }
    m
}

/// Bind `source` at `target` (nosuid, nodev), read-only unless `writable`.
/// The four devices are bound by `minimal_dev`, not here.
fn bind(source: &Path, target: &Path, writable: bool) -> Result<(), String> {
    let none: Option<&str> = None;
    mount(
        Some(source),
        target,
        none,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        none,
    )
    .map_err(|e| bad(&format!("bind {}", source.display()), e))?;
    let mut flags = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | mount_flags_of(source);
    if !writable {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(none, target, none, flags, none)
        .map_err(|e| bad(&format!("remount {}", target.display()), e))
}

fn mkdirs(path: &Path) -> Result<(), String> {
    std::fs::create_dir_all(path).map_err(|e| bad(&format!("mkdir {}", path.display()), e))
}

fn touch(path: &Path) -> Result<(), String> {
    std::fs::write(path, b"").map_err(|e| bad(&format!("create {}", path.display()), e))
}

/// `/` inside `root` (an absolute host path re-rooted).
fn inside(root: &Path, host: &str) -> PathBuf {
    root.join(host.trim_start_matches('/'))
}

fn build_root(spec: &Spec) -> Result<(), String> {
    let none: Option<&str> = None;
    let root = Path::new(&spec.root_dir);
    // Nothing done here reaches the host's mount table.
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(|e| bad("making mounts private", e))?;
    mount(
        Some("tmpfs"),
        root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("size=16m,mode=0755"),
    )
    .map_err(|e| bad("the root tmpfs", e))?;
    for host in &spec.settings.ro_binds {
        let path = Path::new(host);
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            continue; // absent on this host
        };
        let target = inside(root, host);
        if let Some(parent) = target.parent() {
            mkdirs(parent)?;
        }
        if meta.file_type().is_symlink() {
            let to = std::fs::read_link(path).map_err(|e| bad(host, e))?;
            std::os::unix::fs::symlink(&to, &target).map_err(|e| bad(host, e))?;
        } else if meta.is_dir() {
            mkdirs(&target)?;
            bind(path, &target, false)?;
        } else {
            touch(&target)?;
            bind(path, &target, false)?;
        }
    }
    minimal_etc(root)?;
    minimal_dev(root)?;
    let tmp = inside(root, "/tmp");
    mkdirs(&tmp)?;
    mount(
        Some("tmpfs"),
        &tmp,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(format!("size={},mode=1777", spec.settings.tmp_bytes).as_str()),
    )
    .map_err(|e| bad("/tmp", e))?;
    let workspace = inside(root, "/workspace");
    mkdirs(&workspace)?;
    bind(Path::new(&spec.workspace), &workspace, true)?;
    let proc = inside(root, "/proc");
    mkdirs(&proc)?;
    mount(
        Some("proc"),
        &proc,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        none,
    )
    .map_err(|e| bad("/proc", e))?;
    // No namespaces nested in this one: `unshare` and new user namespaces
    // are refused to the command (the limit is this namespace's own).
    std::fs::write(proc.join("sys/user/max_user_namespaces"), "0")
        .map_err(|e| bad("max_user_namespaces", e))?;
    // Into the new root; the old one detached, so no path leads back.
    let old = root.join(".oldroot");
    mkdirs(&old)?;
    unistd::chdir(root).map_err(|e| bad("chdir", e))?;
    unistd::pivot_root(".", ".oldroot").map_err(|e| bad("pivot_root", e))?;
    unistd::chdir("/").map_err(|e| bad("chdir /", e))?;
    umount2("/.oldroot", MntFlags::MNT_DETACH).map_err(|e| bad("detaching the old root", e))?;
    std::fs::remove_dir("/.oldroot").map_err(|e| bad("rmdir /.oldroot", e))?;
    mount(
        none,
        "/",
        none,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        none,
    )
    .map_err(|e| bad("remounting / read-only", e))?;
    loopback_up();
    Ok(())
}

/// Just enough of /etc for programs to start: no host secrets.
fn minimal_etc(root: &Path) -> Result<(), String> {
    let etc = inside(root, "/etc");
    mkdirs(&etc)?;
    let files = [
        (
            "passwd",
            "root:x:0:0:root:/root:/bin/sh\nsandbox:x:1000:1000:sandbox:/workspace:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        ),
        ("group", "root:x:0:\nsandbox:x:1000:\nnogroup:x:65534:\n"),
        ("hosts", "127.0.0.1 localhost sandbox\n::1 localhost\n"),
        ("hostname", "sandbox\n"),
        ("resolv.conf", ""),
        ("nsswitch.conf", "passwd: files\ngroup: files\nhosts: files\n"),
    ];
    for (name, text) in files {
        std::fs::write(etc.join(name), text).map_err(|e| bad(name, e))?;
    }
    for shared in ["/etc/ld.so.cache", "/etc/localtime"] {
        if Path::new(shared).is_file() {
            let target = inside(root, shared);
            touch(&target)?;
            bind(Path::new(shared), &target, false)?;
        }
    }
    Ok(())
}

/// null, zero, random and urandom, bound from the host's (a user namespace
/// cannot mknod), and the usual links.
fn minimal_dev(root: &Path) -> Result<(), String> {
    let dev = inside(root, "/dev");
    mkdirs(&dev)?;
    for name in ["null", "zero", "random", "urandom"] {
        let target = dev.join(name);
        touch(&target)?;
        let none: Option<&str> = None;
        let host = PathBuf::from("/dev").join(name);
        mount(Some(&host), &target, none, MsFlags::MS_BIND, none)
            .map_err(|e| bad(&format!("bind {}", host.display()), e))?;
    }
    for (link, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(to, dev.join(link)).map_err(|e| bad(link, e))?;
    }
    Ok(())
}

/// `lo` up, so a command can use 127.0.0.1 of its own namespace (it has
/// no other interface).
fn loopback_up() {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    let Ok(sock) = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    ) else {
        return;
    };
    // SAFETY: an ifreq naming "lo", passed to SIOCGIFFLAGS / SIOCSIFFLAGS.
    unsafe {
        let mut req: nix::libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            req.ifr_name[i] = *b as nix::libc::c_char;
        }
        if nix::libc::ioctl(sock.as_raw_fd(), nix::libc::SIOCGIFFLAGS, &mut req) == 0 {
            req.ifr_ifru.ifru_flags |= nix::libc::IFF_UP as i16;
            nix::libc::ioctl(sock.as_raw_fd(), nix::libc::SIOCSIFFLAGS, &req);
        }
    }
}

/// In the forked child: limits, privileges, descriptors, then `sh -c`.
fn exec_command(spec: &Spec) -> String {
    let limits = [
        (Resource::RLIMIT_CPU, spec.settings.cpu_seconds),
        (Resource::RLIMIT_AS, spec.settings.memory_bytes),
        (Resource::RLIMIT_FSIZE, spec.settings.file_size_bytes),
        (Resource::RLIMIT_NOFILE, spec.settings.open_files),
        (Resource::RLIMIT_NPROC, spec.settings.pids),
        (Resource::RLIMIT_CORE, 0),
    ];
    for (resource, value) in limits {
        if let Err(e) = setrlimit(resource, value, value) {
            return format!("setrlimit {resource:?}: {e}");
        }
    }
    if let Err(e) = nix::sys::prctl::set_no_new_privs() {
        return format!("no_new_privs: {e}");
    }
    if let Err(e) = unistd::setsid() {
        return format!("setsid: {e}");
    }
    if let Err(e) = unistd::chdir("/workspace") {
        return format!("chdir /workspace: {e}");
    }
    // Every descriptor but stdin, stdout and stderr, the report pipe too.
    // SAFETY: close_range on descriptors this process no longer uses.
    unsafe {
        nix::libc::syscall(nix::libc::SYS_close_range, 3u32, u32::MAX, 0u32);
    }
    let cstr = |s: &str| CString::new(s).unwrap_or_default();
    let argv = [cstr("/bin/sh"), cstr("-c"), cstr(&spec.command)];
    let env = [
        cstr("PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"),
        cstr("HOME=/workspace"),
        cstr("LANG=C.UTF-8"),
        cstr("USER=sandbox"),
        cstr("TMPDIR=/tmp"),
    ];
    match unistd::execve(&argv[0], &argv, &env) {
        Err(e) => format!("execve /bin/sh: {e}"),
        Ok(never) => match never {},
    }
}
