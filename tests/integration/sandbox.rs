//! The namespace sandbox, attacked (issue 12): each case runs a command
//! through `lynkr sandbox run`, exactly as the gateway would run a model's
//! command, and checks that what it tried stayed inside. The README lists
//! the cases with their results.

use crate::common::*;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// What a sandboxed command did.
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Ran {
    fn both(&self) -> String {
        format!(
            "exit {}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Small limits, so the bombs go off quickly.
const LIMITS: &str = "sandbox:
  timeout_ms: 5000
  cpu_seconds: 5
  memory_bytes: 268435456
  pids: 32
  file_size_bytes: 1048576
  output_bytes: 4096
  tmp_bytes: 1048576
";

struct Sandbox {
    config: PathBuf,
    workspace: PathBuf,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = scratch_dir("sandbox");
        let workspace = dir.join("ws");
        std::fs::create_dir_all(&workspace).unwrap();
        let config = dir.join("lynkr.yaml");
        std::fs::write(
            &config,
            format!("{LIMITS}  workspace_root: {}\n", dir.display()),
        )
        .unwrap();
        Sandbox { config, workspace }
    }

    fn run(&self, command: &str, timeout_secs: u64) -> Ran {
        let started = Instant::now();
        let out = Command::new(lynkr_bin())
            .args(["sandbox", "run", "-c"])
            .arg(&self.config)
            .arg("--workspace")
            .arg(&self.workspace)
            .args(["--timeout", &timeout_secs.to_string(), "--", command])
            // What the gateway's environment could hold: never passed on.
            .env("OPENAI_API_KEY", "sk-secret-provider-key")
            .output()
            .expect("run lynkr sandbox");
        Ran {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            took: started.elapsed(),
        }
    }
}

/// Host processes (not threads) whose command line contains `needle`.
fn host_processes(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = entry.path().join("cmdline");
        if let Ok(bytes) = std::fs::read(&cmdline) {
            let text = String::from_utf8_lossy(&bytes).replace('\0', " ");
            if text.contains(needle) && !text.contains("lynkr sandbox run") {
                found.push(text);
            }
        }
    }
    found
}

/// One attack: the command, and what containment looks like.
struct Case {
    name: &'static str,
    command: String,
    contained: Box<dyn Fn(&Ran) -> bool>,
}

fn case(name: &'static str, command: &str, contained: impl Fn(&Ran) -> bool + 'static) -> Case {
    Case {
        name,
        command: command.to_string(),
        contained: Box::new(contained),
    }
}

fn failed(r: &Ran) -> bool {
    r.code != 0
}

#[test]
fn the_escape_suite_is_contained() {
    let sb = Sandbox::new();
    // Things on the host the command must not reach.
    let secret_dir = scratch_dir("sandbox-secret");
    let secret = secret_dir.join("lynkr.env");
    std::fs::write(&secret, "ANTHROPIC_API_KEY=sk-host-secret\n").unwrap();
    let gateway_port = {
        // A listener standing in for the gateway's port.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        std::mem::forget(l); // kept open for the whole test
        port
    };
    let my_pid = std::process::id();
    let parent_of_ws = sb.workspace.parent().unwrap().display().to_string();
    let py = |code: &str| format!("python3 -c '{code}'");

    let cases = vec![
        // Reading host files outside the binds.
        case("read /etc/shadow", "cat /etc/shadow", failed),
        case("list /root", "ls /root", failed),
        case(
            "read the gateway's secrets file",
            &format!("cat {}", secret.display()),
            |r| failed(r) && !r.stdout.contains("sk-host-secret"),
        ),
        case(
            "read the gateway's environment",
            &format!("cat /proc/{my_pid}/environ"),
            |r| failed(r) && !r.stdout.contains("OPENAI"),
        ),
        case(
            "the host's users",
            "cat /etc/passwd",
            |r| !r.stdout.contains("_apt") && !r.stdout.contains("daemon:"),
        ),
        case(
            "provider keys in the environment",
            "env",
            |r| !r.stdout.contains("sk-secret") && r.stdout.contains("HOME=/workspace"),
        ),
        // Writing outside the workspace.
        case("write /usr", "touch /usr/escape", failed),
        case("write /", "touch /escape", failed),
        case("write /etc", "echo x > /etc/passwd", failed),
        case(
            "write beside the workspace through ..",
            "touch /workspace/../escape",
            failed,
        ),
        case(
            "write the workspace's host parent",
            &format!("touch {parent_of_ws}/escape"),
            failed,
        ),
        // Privileges.
        case(
            "a setuid copy of the shell",
            "cp /bin/sh /workspace/sh && chmod u+s /workspace/sh; /workspace/sh -c id -u; id -u",
            |r| !r.stdout.lines().any(|l| l.trim() == "0"),
        ),
        case("su to root", "su root -c 'id -u'", |r| {
            failed(r) && !r.stdout.lines().any(|l| l.trim() == "0")
        }),
        case("mount a tmpfs", "mount -t tmpfs x /tmp", failed),
        case("a nested user namespace", "unshare -U true", failed),
        case("a nested mount namespace", "unshare -m true", failed),
        case("chroot", "chroot / true", failed),
        case("mknod", "mknod /tmp/mem c 1 1", failed),
        case(
            "ptrace PID 1",
            &py("import ctypes; libc = ctypes.CDLL(None); print(libc.ptrace(16, 1, 0, 0))"),
            |r| r.stdout.trim() == "-1",
        ),
        case(
            "kill the gateway",
            &format!("kill -9 {my_pid}"),
            failed, // and this test is still running
        ),
        // Seeing the host.
        case(
            "host PIDs",
            &format!("ls /proc | grep -c '^[0-9]'; ls -d /proc/{my_pid}"),
            |r| {
                failed(r)
                    && r.stdout
                        .lines()
                        .next()
                        .and_then(|n| n.trim().parse::<u32>().ok())
                        .is_some_and(|n| n < 10)
            },
        ),
        case("/proc/1/root", "ls /proc/1/root/etc", failed),
        case("write /sys", "echo 1 > /sys/kernel/sysrq", failed),
        case("write /proc/sys", "echo 1 > /proc/sys/kernel/sysrq", failed),
        case(
            "TIOCSTI",
            &py("import fcntl, termios; fcntl.ioctl(0, termios.TIOCSTI, b\"x\")"),
            failed,
        ),
        case("inherited descriptors", "ls /proc/self/fd", |r| {
            // 0, 1, 2 and ls's own directory descriptor.
            r.stdout.split_whitespace().count() <= 4
        }),
        // The network.
        case(
            "the gateway's port",
            &py(&format!(
                "import socket; s = socket.socket(); s.settimeout(2); s.connect((\"127.0.0.1\", {gateway_port}))"
            )),
            failed,
        ),
        case(
            "any address",
            &py("import socket; s = socket.socket(); s.settimeout(2); s.connect((\"1.1.1.1\", 53))"),
            failed,
        ),
        case("DNS", "getent hosts example.com", failed),
        case("interfaces", "cat /proc/net/dev", |r| {
            r.stdout.contains("lo:") && r.stdout.lines().count() == 3
        }),
        // Bombs.
        case(
            "a fork bomb",
            "bomb() { bomb | bomb & }; bomb; sleep 1; echo survived",
            |r| r.took < Duration::from_secs(15),
        ),
        case(
            "a memory bomb",
            &py("x = bytearray(2 * 1024 * 1024 * 1024); print(\"allocated\")"),
            |r| failed(r) && !r.stdout.contains("allocated"),
        ),
        case(
            "a disk fill of /tmp",
            "head -c 4000000 /dev/zero > /tmp/fill",
            failed,
        ),
        case(
            "a file past the size limit",
            "head -c 4000000 /dev/zero > /workspace/big",
            failed,
        ),
        case(
            "an output flood",
            "head -c 10000000 /dev/zero | tr '\\0' x",
            |r| r.stdout.len() < 4200 && r.stdout.contains("[output truncated: 9995904 more bytes]"),
        ),
        case(
            "zombies left behind",
            "(sleep 0.1 &); (sleep 0.1 &); sleep 0.5; ps -eo stat | grep -c Z",
            |r| r.stdout.trim() == "0",
        ),
    ];
    let mut escaped = Vec::new();
    for c in &cases {
        let ran = sb.run(&c.command, 5);
        if !(c.contained)(&ran) {
            escaped.push(format!("{}: {}\n{}", c.name, c.command, ran.both()));
        }
    }
    assert!(cases.len() >= 30);
    assert!(
        escaped.is_empty(),
        "not contained:\n{}",
        escaped.join("\n\n")
    );
    assert!(
        !sb.workspace.parent().unwrap().join("escape").exists(),
        "nothing written beside the workspace"
    );
    assert_eq!(
        std::fs::read_to_string(&secret).unwrap(),
        "ANTHROPIC_API_KEY=sk-host-secret\n"
    );
}

#[test]
fn time_limits_kill_the_whole_namespace() {
    let sb = Sandbox::new();
    // Sleeping past the deadline: 124, killed on time.
    let ran = sb.run("echo started; sleep 600", 1);
    assert_eq!(ran.code, 124, "{}", ran.both());
    assert!(ran.stdout.contains("started"));
    assert!(ran.took < Duration::from_secs(4), "{:?}", ran.took);
    assert!(
        ran.stderr.contains("ran past its 1000 ms"),
        "{}",
        ran.both()
    );
    // A CPU spin is stopped by the deadline too.
    let ran = sb.run("while :; do :; done", 1);
    assert_eq!(ran.code, 124, "{}", ran.both());
    // A double fork outlives its command, not its namespace.
    let marker = "sleep 987654";
    let ran = sb.run(&format!("(setsid {marker} &) ; echo detached"), 5);
    assert_eq!(ran.code, 0, "{}", ran.both());
    assert!(ran.took < Duration::from_secs(4), "{:?}", ran.took);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        host_processes(marker).is_empty(),
        "left running on the host: {:?}",
        host_processes(marker)
    );
    // And so does one that is still running at the deadline.
    let marker = "sleep 876543";
    let ran = sb.run(&format!("(setsid {marker} &) ; sleep 600"), 1);
    assert_eq!(ran.code, 124);
    std::thread::sleep(Duration::from_millis(200));
    assert!(host_processes(marker).is_empty());
}

#[test]
fn a_command_works_in_its_workspace_and_reports_its_status() {
    let sb = Sandbox::new();
    let ran = sb.run(
        "id -u; pwd; hostname; echo kept > note.txt; echo oops >&2; exit 3",
        5,
    );
    assert_eq!(ran.code, 3, "{}", ran.both());
    assert_eq!(ran.stdout, "1000\n/workspace\nsandbox\n");
    assert_eq!(ran.stderr, "oops\n");
    assert_eq!(
        std::fs::read_to_string(sb.workspace.join("note.txt")).unwrap(),
        "kept\n"
    );
    // The next command sees the same workspace; /tmp is its own each time.
    let ran = sb.run("cat note.txt; echo t > /tmp/t; ls /tmp", 5);
    assert_eq!(ran.stdout, "kept\nt\n", "{}", ran.both());
    let ran = sb.run("ls /tmp | wc -l", 5);
    assert_eq!(ran.stdout.trim(), "0");
    // Several words are quoted and joined, as a shell would take them.
    let out = Command::new(lynkr_bin())
        .args(["sandbox", "run", "-c"])
        .arg(&sb.config)
        .arg("--workspace")
        .arg(&sb.workspace)
        .args(["--", "printf", "%s|", "a b", "it's", "$HOME"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a b|it's|$HOME|");
    // Bad use is said plainly.
    let out = Command::new(lynkr_bin())
        .args(["sandbox", "run", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("put the command after --"));
}

#[test]
fn policy_check_names_the_rule_that_decided() {
    let dir = scratch_dir("policy");
    let config = dir.join("lynkr.yaml");
    std::fs::write(
        &config,
        "sandbox:\n  policy: allowlist\n  commands: [{allow: \"ls *\"}, {allow: \"git status\"}, {deny: \"git push --force*\"}]\n",
    )
    .unwrap();
    let check = |line: &str, env: &[(&str, &str)]| {
        let out = Command::new(lynkr_bin())
            .args(["policy", "check", "-c"])
            .arg(&config)
            .arg(line)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        )
    };
    assert_eq!(
        check("git status", &[]),
        (0, "allow: rule allow \"git status\"".into())
    );
    assert_eq!(
        check("ls && rm -rf ~", &[]),
        (1, "deny: no allow rule matches \"rm -rf ~\"".into())
    );
    assert_eq!(
        check("git push origin --force", &[]),
        (
            1,
            "deny: \"git\" is refused by rule deny \"git push --force*\"".into()
        )
    );
    // POLICY_SAFE_COMMANDS_ENABLED=false is the isolate mode: contained, not refused.
    let (code, said) = check("rm -rf x", &[("POLICY_SAFE_COMMANDS_ENABLED", "false")]);
    assert_eq!((code, said.starts_with("allow: policy isolate")), (0, true));
    // More rules from POLICY_SAFE_COMMANDS_CONFIG.
    let rules = dir.join("rules.yaml");
    std::fs::write(&rules, "- allow: \"rm -rf x\"\n").unwrap();
    let path = rules.display().to_string();
    let (code, _) = check(
        "rm -rf x",
        &[("POLICY_SAFE_COMMANDS_CONFIG", path.as_str())],
    );
    assert_eq!(code, 0);
}

/// A link a command plants in the workspace, then handed to the editor
/// (which runs in the gateway, outside the namespaces): it cannot lead out.
#[test]
fn a_symlink_planted_by_a_command_does_not_lead_the_editor_out() {
    use lynkr::sandbox::editor::Workspace;
    let sb = Sandbox::new();
    std::fs::write(
        sb.workspace.parent().unwrap().join("beside.txt"),
        "beside the workspace\n",
    )
    .unwrap();
    let ran = sb.run(
        "ln -s /etc/shadow shadow; ln -s .. up; ln -s /proc/1/root root1; mkdir d; ln -s ../../beside.txt d/b; echo ok > real; ln -s real fine",
        5,
    );
    assert_eq!(ran.code, 0, "{}", ran.both());
    let editor = Workspace::open(&sb.workspace, None, vec![".env".into()]).unwrap();
    for path in [
        "shadow",
        "up/beside.txt",
        "root1/etc/shadow",
        "d/b",
        "/workspace/up/beside.txt",
    ] {
        let e = editor.view(path, None).unwrap_err();
        assert_eq!(e.code, "invalid_tool_input", "{path}: {e:?}");
        assert!(editor.create(path, "x").is_err(), "{path}");
    }
    assert_eq!(
        std::fs::read_to_string(sb.workspace.parent().unwrap().join("beside.txt")).unwrap(),
        "beside the workspace\n"
    );
    assert!(
        editor.view("fine", None).is_ok(),
        "a link inside is followed"
    );
}

/// Where namespaces cannot be made, the command is refused with the
/// reason, and never runs unsandboxed. Simulated inside a user namespace
/// of the test's own whose limit of nested user namespaces is 0 (the
/// host's setting is left alone; `unshare` is util-linux's).
#[test]
fn without_namespaces_a_command_is_refused_not_run_unsandboxed() {
    let dir = scratch_dir("no-namespaces");
    let workspace = dir.join("ws");
    std::fs::create_dir_all(&workspace).unwrap();
    let config = dir.join("lynkr.yaml");
    // Inside that namespace only its root is mapped: the workspace stays root's.
    std::fs::write(&config, "sandbox:\n  uid: 0\n  gid: 0\n").unwrap();
    let script = format!(
        "echo 0 > /proc/sys/user/max_user_namespaces && exec {} sandbox run -c {} --workspace {} -- 'touch /workspace/ran'",
        lynkr_bin().display(),
        config.display(),
        workspace.display()
    );
    let out = Command::new("unshare")
        .args(["-U", "-r", "sh", "-c", &script])
        .output()
        .expect("run unshare (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(
        stderr.contains("cannot create the sandbox's namespaces")
            && stderr.contains("refused rather than run unsandboxed"),
        "{stderr}"
    );
    assert!(!workspace.join("ran").exists(), "the command never ran");
}
