//! The text editor of the code execution tool (`view`, `create`,
//! `str_replace`), on a workspace. Every path is resolved beneath the
//! workspace's directory descriptor with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_MAGICLINKS)`: the kernel refuses `..` past the top, absolute
//! symlinks and symlinks leading out, and `/proc` magic links, at the moment
//! of the open. No string is compared to decide whether a path is inside,
//! so a symlink a command planted a moment before cannot lead out.
//! A refusal is the tool's error result for the model, not an HTTP error.

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

/// The largest file `view` shows and `str_replace` edits.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// A refusal or failure, in the terms of Anthropic's error blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditorError {
    /// `invalid_tool_input`, `file_not_found`, `output_file_too_large`, `unavailable`.
    pub code: &'static str,
    pub message: String,
}

fn error(code: &'static str, message: impl Into<String>) -> EditorError {
    EditorError {
        code,
        message: message.into(),
    }
}

/// What `view` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Viewed {
    File {
        content: String,
        start_line: usize,
        num_lines: usize,
        total_lines: usize,
    },
    Directory {
        entries: Vec<String>,
    },
}

/// What `str_replace` changed: the lines around the edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replaced {
    pub old_start: usize,
    pub old_lines: usize,
    pub new_start: usize,
    pub new_lines: usize,
    pub lines: Vec<String>,
}

/// A workspace, held open by its directory descriptor.
pub struct Workspace {
    dir: OwnedFd,
    /// Files made here are handed to the sandbox's user (when Lynkr is root).
    owner: Option<(u32, u32)>,
    /// Path components refused whatever they hold (`.env`).
    blocked: Vec<String>,
}

impl Workspace {
    pub fn open(
        root: &Path,
        owner: Option<(u32, u32)>,
        blocked: Vec<String>,
    ) -> Result<Workspace, EditorError> {
        let dir = nix::fcntl::open(
            root,
            OFlag::O_DIRECTORY | OFlag::O_PATH | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| error("unavailable", format!("workspace {}: {e}", root.display())))?;
        Ok(Workspace {
            dir,
            owner,
            blocked,
        })
    }

    /// The path relative to the workspace: `/workspace/x` and `x` are the
    /// same file; any other absolute path is refused.
    fn relative<'p>(&self, path: &'p str) -> Result<&'p str, EditorError> {
        let rel = match path.strip_prefix("/workspace") {
            Some("") => ".",
            Some(rest) if rest.starts_with('/') => rest.trim_start_matches('/'),
            _ if path.starts_with('/') => {
                return Err(error(
                    "invalid_tool_input",
                    format!("{path}: outside the workspace (/workspace)"),
                ))
            }
            _ => path,
        };
        let rel = if rel.is_empty() { "." } else { rel };
        if let Some(name) = rel
            .split('/')
            .find(|c| self.blocked.iter().any(|b| crate::util::glob_match(b, c)))
        {
            return Err(error(
                "invalid_tool_input",
                format!("{path}: {name} is a blocked path"),
            ));
        }
        Ok(rel)
    }

    fn open_beneath(&self, rel: &str, flags: OFlag, mode: Mode) -> Result<OwnedFd, EditorError> {
        // openat2 refuses O_PATH with any flag but these few.
        let extra = match flags.contains(OFlag::O_PATH) {
            true => OFlag::O_CLOEXEC,
            false => OFlag::O_CLOEXEC | OFlag::O_NOCTTY,
        };
        let how = OpenHow::new()
            .flags(flags | extra)
            .mode(mode)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        openat2(self.dir.as_fd(), rel, how).map_err(|e| match e {
            Errno::ENOENT => error(
                "file_not_found",
                format!("{rel}: no such file or directory"),
            ),
            Errno::EXDEV | Errno::ELOOP => error(
                "invalid_tool_input",
                format!("{rel}: leads outside the workspace"),
            ),
            e => error("invalid_tool_input", format!("{rel}: {e}")),
        })
    }

    /// A file's lines (numbered from 1), or a directory's entries.
    pub fn view(
        &self,
        path: &str,
        range: Option<(usize, Option<usize>)>,
    ) -> Result<Viewed, EditorError> {
        let rel = self.relative(path)?;
        let fd = self.open_beneath(rel, OFlag::O_RDONLY | OFlag::O_NONBLOCK, Mode::empty())?;
        let file = std::fs::File::from(fd);
        let meta = file
            .metadata()
            .map_err(|e| error("unavailable", format!("{path}: {e}")))?;
        if meta.is_dir() {
            let mut entries = Vec::new();
            let mut dir = nix::dir::Dir::from_fd(file.into())
                .map_err(|e| error("unavailable", format!("{path}: {e}")))?;
            for entry in dir.iter().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name != "." && name != ".." {
                    entries.push(name);
                }
            }
            entries.sort();
            return Ok(Viewed::Directory { entries });
        }
        if !meta.is_file() {
            return Err(error(
                "invalid_tool_input",
                format!("{path}: not a regular file"),
            ));
        }
        let text = read_text(file, meta.len(), path)?;
        let lines: Vec<&str> = text.lines().collect();
        let total = lines.len();
        let (start, end) = match range {
            None => (1, total),
            Some((s, e)) => (s.max(1), e.unwrap_or(total).min(total)),
        };
        if start > end.max(1) || start > total.max(1) {
            return Err(error(
                "invalid_tool_input",
                format!("{path}: lines {start}-{end} are outside its {total} lines"),
            ));
        }
        let shown = lines.get(start - 1..end).unwrap_or_default();
        Ok(Viewed::File {
            content: shown.join("\n"),
            start_line: start,
            num_lines: shown.len(),
            total_lines: total,
        })
    }

    /// Write `text` to `path` (made, or replaced); parent directories are
    /// made beneath the workspace. Whether it replaced a file.
    pub fn create(&self, path: &str, text: &str) -> Result<bool, EditorError> {
        let rel = self.relative(path)?;
        if let Some((parent, _)) = rel.rsplit_once('/') {
            self.make_dirs(parent)?;
        }
        let existed = self.open_beneath(rel, OFlag::O_PATH, Mode::empty()).is_ok();
        let fd = self.open_beneath(
            rel,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC,
            Mode::from_bits_truncate(0o644),
        )?;
        self.hand_over(&fd);
        let mut file = std::fs::File::from(fd);
        file.write_all(text.as_bytes())
            .map_err(|e| error("unavailable", format!("{path}: {e}")))?;
        Ok(existed)
    }

    /// Replace the one occurrence of `old` in `path` by `new`.
    pub fn str_replace(&self, path: &str, old: &str, new: &str) -> Result<Replaced, EditorError> {
        let rel = self.relative(path)?;
        let fd = self.open_beneath(rel, OFlag::O_RDWR, Mode::empty())?;
        let mut file = std::fs::File::from(fd);
        let len = file
            .metadata()
            .map_err(|e| error("unavailable", format!("{path}: {e}")))?
            .len();
        let text = read_text(
            file.try_clone()
                .map_err(|e| error("unavailable", e.to_string()))?,
            len,
            path,
        )?;
        if old.is_empty() {
            return Err(error("invalid_tool_input", "old_str is empty"));
        }
        let mut found = text.match_indices(old);
        let Some((at, _)) = found.next() else {
            return Err(error(
                "invalid_tool_input",
                format!("old_str was not found in {path}"),
            ));
        };
        if found.next().is_some() {
            return Err(error(
                "invalid_tool_input",
                format!("old_str occurs more than once in {path}; give more context"),
            ));
        }
        let updated = format!("{}{new}{}", &text[..at], &text[at + old.len()..]);
        use std::io::Seek;
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(updated.as_bytes()))
            .map_err(|e| error("unavailable", format!("{path}: {e}")))?;
        let start = text[..at].matches('\n').count() + 1;
        let (old_lines, new_lines) = (old.lines().count().max(1), new.lines().count().max(1));
        Ok(Replaced {
            old_start: start,
            old_lines,
            new_start: start,
            new_lines,
            lines: updated
                .lines()
                .skip(start - 1)
                .take(new_lines)
                .map(str::to_owned)
                .collect(),
        })
    }

    /// `mkdir -p` beneath the workspace, one component at a time.
    fn make_dirs(&self, rel: &str) -> Result<(), EditorError> {
        let mut at = String::new();
        for comp in rel.split('/').filter(|c| !c.is_empty() && *c != ".") {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(comp);
            if self
                .open_beneath(&at, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty())
                .is_ok()
            {
                continue;
            }
            let (parent, name) = at.rsplit_once('/').unwrap_or((".", at.as_str()));
            let parent_fd =
                self.open_beneath(parent, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty())?;
            nix::sys::stat::mkdirat(parent_fd.as_fd(), name, Mode::from_bits_truncate(0o755))
                .map_err(|e| error("invalid_tool_input", format!("{at}: {e}")))?;
            let made =
                self.open_beneath(&at, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())?;
            self.hand_over(&made);
        }
        Ok(())
    }

    fn hand_over(&self, fd: &OwnedFd) {
        if let Some((uid, gid)) = self.owner {
            let _ = nix::unistd::fchown(fd, Some(uid.into()), Some(gid.into()));
        }
    }
}

fn read_text(mut file: std::fs::File, len: u64, path: &str) -> Result<String, EditorError> {
    if len > MAX_FILE_BYTES {
        return Err(error(
            "output_file_too_large",
            format!("{path}: {len} bytes, more than the {MAX_FILE_BYTES} the editor reads"),
        ));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    Read::by_ref(&mut file)
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| error("unavailable", format!("{path}: {e}")))?;
    String::from_utf8(bytes)
        .map_err(|_| error("invalid_tool_input", format!("{path}: not UTF-8 text")))
}
