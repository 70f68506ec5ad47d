//! A shell command line, parsed the way `sh` reads it, for the command
//! policy: into the simple commands it would run. Quotes and escapes are
//! removed; `;`, `&&`, `||`, `|`, `&` and newlines separate commands;
//! `( )` and `{ }` groups and `$( )` / backtick substitutions are parsed
//! and their commands included; redirections are recognized and set
//! aside. A word whose value the shell decides at run time (a variable,
//! a substitution, a glob, a tilde) is marked dynamic. What this parser
//! cannot read with certainty (here-documents, process substitution,
//! control flow, functions, arithmetic, an unclosed quote) is an error:
//! the policy denies it rather than guess.

/// One word of a simple command, quotes removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    pub text: String,
    /// Its value is only known when the shell runs it.
    pub dynamic: bool,
}

/// A program and its arguments, with the variables assigned before it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SimpleCommand {
    /// `NAME=value` words before the program.
    pub assignments: Vec<String>,
    pub words: Vec<Word>,
}

/// Why a line cannot be read with certainty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable(pub String);

/// Words that start a construct this parser does not follow.
const CONTROL: &[&str] = &[
    "if", "then", "else", "elif", "fi", "for", "while", "until", "do", "done", "case", "esac",
    "select", "function", "[[", "]]", "!", "coproc", "time",
];
/// Nesting deeper than this is refused (a line built to exhaust the parser).
const MAX_DEPTH: usize = 16;

pub fn parse(line: &str) -> Result<Vec<SimpleCommand>, Unreadable> {
    let mut p = Parser {
        s: line.as_bytes(),
        i: 0,
        out: Vec::new(),
    };
    p.list(0, None)?;
    Ok(p.out)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    out: Vec<SimpleCommand>,
}

fn unreadable<T>(why: impl Into<String>) -> Result<T, Unreadable> {
    Err(Unreadable(why.into()))
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn at(&self, text: &str) -> bool {
        self.s[self.i..].starts_with(text.as_bytes())
    }

    fn skip_blanks(&mut self) {
        // Blanks, and line continuations (removed before words are read).
        while matches!(self.peek(), Some(b' ' | b'\t')) || self.at("\\\n") {
            self.i += if self.peek() == Some(b'\\') { 2 } else { 1 };
        }
        // A comment runs to the end of the line.
        if self.peek() == Some(b'#') {
            while !matches!(self.peek(), None | Some(b'\n')) {
                self.i += 1;
            }
        }
    }

    /// Commands until the end, or until `close` (`)` or `}`) is consumed.
    fn list(&mut self, depth: usize, close: Option<u8>) -> Result<(), Unreadable> {
        if depth > MAX_DEPTH {
            return unreadable("nested too deeply");
        }
        loop {
            self.skip_blanks();
            match self.peek() {
                None => {
                    return match close {
                        None => Ok(()),
                        Some(c) => unreadable(format!("no closing {:?}", c as char)),
                    };
                }
                Some(c) if Some(c) == close => {
                    self.i += 1;
                    return Ok(());
                }
                Some(b';' | b'&' | b'|' | b'\n') => {
                    if self.at(";;") {
                        return unreadable("a case statement");
                    }
                    self.i += 1;
                }
                Some(b'(') => {
                    if self.at("((") {
                        return unreadable("arithmetic");
                    }
                    self.i += 1;
                    self.list(depth + 1, Some(b')'))?;
                }
                Some(b')') => return unreadable("an unmatched ')'"),
                Some(b'{') if self.word_ends_at(self.i + 1) => {
                    self.i += 1;
                    self.list(depth + 1, Some(b'}'))?;
                }
                Some(_) => self.simple_command(depth, close)?,
            }
        }
    }

    /// Whether a word boundary follows position `at` (for `{` and `}`).
    fn word_ends_at(&self, at: usize) -> bool {
        matches!(
            self.s.get(at),
            None | Some(b' ' | b'\t' | b'\n' | b';' | b'&' | b'|' | b'(' | b')')
        )
    }

    fn simple_command(&mut self, depth: usize, close: Option<u8>) -> Result<(), Unreadable> {
        let mut cmd = SimpleCommand::default();
        loop {
            self.skip_blanks();
            match self.peek() {
                None | Some(b';' | b'&' | b'|' | b'\n' | b')') => break,
                Some(b'}') if close == Some(b'}') && self.word_ends_at(self.i + 1) => break,
                Some(b'(') => {
                    if cmd.words.len() == 1 && self.at("()") || self.at("( )") {
                        return unreadable("a function definition");
                    }
                    return unreadable("'(' inside a command");
                }
                Some(b'<' | b'>') => self.redirection(depth)?,
                Some(c) if c.is_ascii_digit() && self.is_fd_redirection() => {
                    while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                        self.i += 1;
                    }
                    self.redirection(depth)?;
                }
                Some(_) => {
                    let word = self.word(depth)?;
                    if cmd.words.is_empty() && !word.dynamic && is_assignment(&word.text) {
                        cmd.assignments.push(word.text);
                        continue;
                    }
                    if cmd.words.is_empty() && CONTROL.contains(&word.text.as_str()) {
                        return unreadable(format!("control flow ({})", word.text));
                    }
                    cmd.words.push(word);
                }
            }
        }
        if !cmd.words.is_empty() || !cmd.assignments.is_empty() {
            self.out.push(cmd);
        }
        Ok(())
    }

    /// `2>` and the like: digits directly followed by `<` or `>`.
    fn is_fd_redirection(&self) -> bool {
        let mut j = self.i;
        while self.s.get(j).is_some_and(|c| c.is_ascii_digit()) {
            j += 1;
        }
        matches!(self.s.get(j), Some(b'<' | b'>'))
    }

    /// A redirection operator and its target word (set aside).
    fn redirection(&mut self, depth: usize) -> Result<(), Unreadable> {
        if self.at("<<") {
            return unreadable("a here-document");
        }
        if self.at("<(") || self.at(">(") {
            return unreadable("process substitution");
        }
        self.i += 1; // < or >
        if matches!(self.peek(), Some(b'>' | b'|')) {
            self.i += 1; // >> or >|
        }
        if self.peek() == Some(b'&') {
            self.i += 1; // 2>&1, >&2
        }
        self.skip_blanks();
        match self.peek() {
            None | Some(b';' | b'&' | b'|' | b'\n' | b'(' | b')' | b'<' | b'>') => {
                unreadable("a redirection without a target")
            }
            Some(_) => self.word(depth).map(drop),
        }
    }

    /// One word: quotes and escapes removed, substitutions parsed.
    fn word(&mut self, depth: usize) -> Result<Word, Unreadable> {
        let mut text = Vec::new();
        let mut dynamic = false;
        let start = self.i;
        while let Some(c) = self.peek() {
            match c {
                b' ' | b'\t' | b'\n' | b';' | b'&' | b'|' | b'(' | b')' | b'<' | b'>' => break,
                b'\\' => {
                    self.i += 1;
                    match self.peek() {
                        Some(b'\n') => self.i += 1, // a line continuation
                        Some(e) => {
                            text.push(e);
                            self.i += 1;
                        }
                        None => return unreadable("a trailing backslash"),
                    }
                }
                b'\'' => {
                    self.i += 1;
                    let close = self.s[self.i..]
                        .iter()
                        .position(|&b| b == b'\'')
                        .ok_or_else(|| Unreadable("an unclosed single quote".into()))?;
                    text.extend_from_slice(&self.s[self.i..self.i + close]);
                    self.i += close + 1;
                }
                b'"' => {
                    self.i += 1;
                    loop {
                        match self.peek() {
                            None => return unreadable("an unclosed double quote"),
                            Some(b'"') => {
                                self.i += 1;
                                break;
                            }
                            Some(b'\\') => {
                                self.i += 1;
                                match self.peek() {
                                    Some(e @ (b'"' | b'\\' | b'$' | b'`')) => {
                                        text.push(e);
                                        self.i += 1;
                                    }
                                    Some(b'\n') => self.i += 1,
                                    _ => text.push(b'\\'),
                                }
                            }
                            Some(b'$' | b'`') => {
                                self.expansion(depth)?;
                                dynamic = true;
                            }
                            Some(other) => {
                                text.push(other);
                                self.i += 1;
                            }
                        }
                    }
                }
                b'$' | b'`' => {
                    self.expansion(depth)?;
                    dynamic = true;
                }
                b'*' | b'?' | b'[' => {
                    dynamic = true; // a glob: file names decide
                    text.push(c);
                    self.i += 1;
                }
                b'~' if self.i == start => {
                    dynamic = true;
                    text.push(c);
                    self.i += 1;
                }
                b'{' if self.s[self.i..].contains(&b',') || self.at("{}") => {
                    // Brace expansion (`{a,b}`): the shell makes several words.
                    dynamic = true;
                    text.push(c);
                    self.i += 1;
                }
                _ => {
                    text.push(c);
                    self.i += 1;
                }
            }
        }
        Ok(Word {
            text: String::from_utf8_lossy(&text).into_owned(),
            dynamic,
        })
    }

    /// `$NAME`, `${...}`, `$(...)`, `$((...))` or a backtick substitution,
    /// at `self.i`; the commands of a substitution join the output.
    fn expansion(&mut self, depth: usize) -> Result<(), Unreadable> {
        if self.peek() == Some(b'`') {
            self.i += 1;
            let close = self.s[self.i..]
                .iter()
                .position(|&b| b == b'`')
                .ok_or_else(|| Unreadable("an unclosed backtick".into()))?;
            let inner = &self.s[self.i..self.i + close];
            if inner.contains(&b'\\') {
                return unreadable("escapes inside backticks");
            }
            self.i += close + 1;
            return self.nested(inner, depth);
        }
        self.i += 1; // $
        match self.peek() {
            Some(b'(') if self.at("((") => unreadable("arithmetic"),
            Some(b'(') => {
                self.i += 1;
                let mut inner = Parser {
                    s: self.s,
                    i: self.i,
                    out: Vec::new(),
                };
                inner.list(depth + 1, Some(b')'))?;
                self.i = inner.i;
                self.out.extend(inner.out);
                Ok(())
            }
            Some(b'{') => {
                let close = self.s[self.i..]
                    .iter()
                    .position(|&b| b == b'}')
                    .ok_or_else(|| Unreadable("an unclosed ${".into()))?;
                let inner = &self.s[self.i + 1..self.i + close];
                if inner.iter().any(|b| b"$`(:=?+-#%/".contains(b)) {
                    return unreadable("a parameter expansion with an operator");
                }
                self.i += close + 1;
                Ok(())
            }
            Some(c) if c.is_ascii_alphanumeric() || b"_@*#?$!-".contains(&c) => {
                if c.is_ascii_alphabetic() || c == b'_' {
                    while self
                        .peek()
                        .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_')
                    {
                        self.i += 1;
                    }
                } else {
                    self.i += 1;
                }
                Ok(())
            }
            _ => Ok(()), // a lone `$` is itself
        }
    }

    fn nested(&mut self, inner: &[u8], depth: usize) -> Result<(), Unreadable> {
        if depth + 1 > MAX_DEPTH {
            return unreadable("nested too deeply");
        }
        let mut p = Parser {
            s: inner,
            i: 0,
            out: Vec::new(),
        };
        p.list(depth + 1, None)?;
        self.out.extend(p.out);
        Ok(())
    }
}

/// `NAME=...` with a valid shell name.
fn is_assignment(word: &str) -> bool {
    match word.split_once('=') {
        Some((name, _)) => {
            !name.is_empty()
                && !name.as_bytes()[0].is_ascii_digit()
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        }
        None => false,
    }
}
