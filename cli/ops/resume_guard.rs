//! A watchdog for the window in which PgBouncer's clients are paused. Ctrl-C and SIGTERM are
//! held until the RESUME ([`crate::interrupts`]), but nothing can hold a `kill -9`, an OOM
//! kill or a panic that aborts: without this, every client of the cluster would then wait on
//! a PAUSE no one lifts. Before the first PAUSE, pgnomad starts a copy of itself
//! (`pgnomad __resume-guard`, in its own process group so a terminal's Ctrl-C does not reach
//! it) and hands it, through a pipe, the admin-console commands that RESUME every PgBouncer.
//! When the window ends normally pgnomad writes `done`; when the pipe closes without it,
//! pgnomad has died mid-window and the guard RESUMEs every PgBouncer itself.

use std::io::{BufRead, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The hidden subcommand the guard runs as.
pub const SUBCOMMAND: &str = "__resume-guard";
const DONE: &str = "done";

/// One run of `psql` on a PgBouncer admin console: how the target reaches it, so that the
/// guard (another process) can do exactly the same. The environment may carry a password:
/// it goes through the pipe, never on a command line (and it has no `Debug`, so that no
/// error message can print it).
#[derive(Clone, Serialize, Deserialize)]
pub struct ConsoleCommand {
    pub pooler: String,
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub env_remove: Vec<String>,
}

impl ConsoleCommand {
    /// The command, ready to run. It dies with the thread that starts it: a PAUSE still on
    /// its way when pgnomad is killed must not reach PgBouncer after the guard's RESUME.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args);
        for (key, value) in &self.env {
            cmd.env(key, value);
        }
        for key in &self.env_remove {
            cmd.env_remove(key);
        }
        // SAFETY: prctl is async-signal-safe and touches only the child being started.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }
}

/// The guard process, while the clients are paused. [`ResumeGuard::finish`] tells it the
/// window ended with every PgBouncer resumed; anything else, a drop included (a panic
/// unwinding past the RESUME closes the pipe without `done`), makes it RESUME them.
pub struct ResumeGuard {
    child: Option<(Child, ChildStdin)>,
}

impl ResumeGuard {
    /// A guard that watches nothing (no PgBouncer, or a target that cannot describe how it
    /// reaches them).
    pub fn none() -> ResumeGuard {
        ResumeGuard { child: None }
    }

    /// Starts the guard for `resumes` (one `RESUME` command per PgBouncer). When it cannot
    /// start, the reason comes back: the caller goes on without it (Ctrl-C is still held).
    pub fn start(resumes: &[ConsoleCommand]) -> Result<ResumeGuard, String> {
        if resumes.is_empty() {
            return Ok(ResumeGuard::none());
        }
        let program = std::env::current_exe().map_err(|e| format!("cannot find pgnomad's own program: {e}"))?;
        let mut child = Command::new(&program)
            .arg(SUBCOMMAND)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            // Its own process group: a Ctrl-C at the terminal reaches pgnomad, not the guard.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start {} {SUBCOMMAND}: {e}", program.display()))?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let line = serde_json::to_string(resumes).expect("console commands serialize");
        if let Err(e) = writeln!(stdin, "{line}").and_then(|()| stdin.flush()) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("cannot hand the RESUME commands to the guard: {e}"));
        }
        Ok(ResumeGuard { child: Some((child, stdin)) })
    }

    /// Every PgBouncer has been RESUMEd (or was never paused): the guard ends without a word.
    pub fn finish(self) {
        if let Some((mut child, mut stdin)) = self.child {
            let _ = writeln!(stdin, "{DONE}").and_then(|()| stdin.flush());
            drop(stdin);
            // It ends at once on `done`; never wait long on it.
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// How long the guard goes on RESUMEing after pgnomad died: a PAUSE pgnomad had already sent
/// may still be applied by PgBouncer after the first RESUME.
const GUARD_WATCH: Duration = Duration::from_secs(3);
const GUARD_TIMEOUT: Duration = Duration::from_secs(5);

/// `pgnomad __resume-guard`: reads the RESUME commands, then waits for `done` or the end of
/// its input. Returns whether it ended normally (`done`); otherwise it has RESUMEd, and said
/// on stderr what it did. The command ignores SIGHUP and SIGINT first (see [`ignore_hangups`]).
pub fn guard_main(input: impl BufRead) -> bool {
    let mut lines = input.lines();
    let Some(Ok(first)) = lines.next() else { return true };
    let Ok(resumes) = serde_json::from_str::<Vec<ConsoleCommand>>(&first) else {
        say("pgnomad __resume-guard: unreadable input; it is started by pgnomad itself");
        return false;
    };
    for line in lines {
        match line {
            Ok(line) if line.trim() == DONE => return true,
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    let outcome =
        resume_until_quiet(&resumes, |console| super::run_console(console, "RESUME", GUARD_TIMEOUT).map(drop).map_err(|e| e.to_string()));
    let mut message = String::from("pgnomad ended while PgBouncer's clients were paused;");
    if !outcome.resumed.is_empty() {
        message.push_str(&format!(" its guard RESUMEd PgBouncer {}", outcome.resumed.join(", ")));
    } else if outcome.failed.is_empty() {
        message.push_str(" no PgBouncer was left paused");
    }
    for (_, error) in &outcome.failed {
        // The error names the PgBouncer and the command.
        message.push_str(&format!(" {error}: run RESUME on its admin console;"));
    }
    say(message.trim_end_matches(';'));
    false
}

/// A hang-up of the terminal pgnomad ran in, or a Ctrl-C sent to a whole process group,
/// must not end the guard before its work.
pub fn ignore_hangups() {
    // SAFETY: setting signal dispositions to SIG_IGN at the start of the guard process.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
}

fn say(message: &str) {
    let _ = writeln!(std::io::stderr(), "{message}");
}

#[derive(Debug, Default, PartialEq)]
pub struct GuardOutcome {
    /// PgBouncers that were paused and are resumed.
    pub resumed: Vec<String>,
    /// PgBouncers no RESUME reached, with the last error.
    pub failed: Vec<(String, String)>,
}

/// RESUMEs every PgBouncer, again and again for [`GUARD_WATCH`], until each has answered at
/// least once and the last round found none paused ("pooler is not paused" is a quiet one).
fn resume_until_quiet(resumes: &[ConsoleCommand], run: impl Fn(&ConsoleCommand) -> Result<(), String>) -> GuardOutcome {
    let mut outcome = GuardOutcome::default();
    let mut last_error: Vec<Option<String>> = vec![Some("not tried".into()); resumes.len()];
    let started = Instant::now();
    loop {
        let mut quiet = true;
        for (i, console) in resumes.iter().enumerate() {
            match run(console) {
                Ok(()) => {
                    quiet = false;
                    last_error[i] = None;
                    if !outcome.resumed.contains(&console.pooler) {
                        outcome.resumed.push(console.pooler.clone());
                    }
                }
                Err(e) if e.contains("not paused") => last_error[i] = None,
                Err(e) => last_error[i] = Some(e),
            }
        }
        let all_answered = last_error.iter().all(Option::is_none);
        if started.elapsed() >= GUARD_WATCH || (quiet && all_answered && started.elapsed() >= GUARD_WATCH / 2) {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    outcome.failed = resumes.iter().zip(last_error).filter_map(|(console, error)| error.map(|e| (console.pooler.clone(), e))).collect();
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn console(pooler: &str) -> ConsoleCommand {
        ConsoleCommand {
            pooler: pooler.into(),
            program: "psql".into(),
            args: vec!["-h".into(), pooler.into(), "-c".into(), "RESUME".into()],
            env: vec![("PGPASSWORD".into(), "secret".into())],
            env_remove: vec!["PGPASSFILE".into()],
        }
    }

    #[test]
    fn a_pause_applied_after_the_first_resume_is_resumed_too() {
        // b is paused only from the third round on (a PAUSE that was still on its way).
        let rounds = RefCell::new(std::collections::BTreeMap::<String, u32>::new());
        let outcome = resume_until_quiet(&[console("a:1"), console("b:2")], |c| {
            let mut rounds = rounds.borrow_mut();
            let n = rounds.entry(c.pooler.clone()).or_default();
            *n += 1;
            match (c.pooler.as_str(), *n) {
                ("a:1", 1) | ("b:2", 3) => Ok(()),
                _ => Err("ERROR:  pooler is not paused/suspended".into()),
            }
        });
        assert_eq!(outcome, GuardOutcome { resumed: vec!["a:1".into(), "b:2".into()], failed: vec![] });
    }

    #[test]
    fn a_pooler_that_never_answers_is_named_with_its_error() {
        let outcome = resume_until_quiet(&[console("a:1")], |_| Err("connection refused".into()));
        assert_eq!(outcome.failed, vec![("a:1".to_owned(), "connection refused".to_owned())]);
        assert!(outcome.resumed.is_empty());
    }

    #[test]
    fn done_ends_the_guard_without_a_resume_and_a_closed_pipe_does_not() {
        let line = serde_json::to_string(&vec![console("a:1")]).unwrap();
        assert!(guard_main(std::io::Cursor::new(format!("{line}\n{DONE}\n"))));
        // No `done`: pgnomad died. The RESUME runs (psql against an address that refuses,
        // so it fails and is reported), and the guard says it did not end normally.
        let refused = ConsoleCommand { program: "false".into(), args: vec![], ..console("a:1") };
        let line = serde_json::to_string(&vec![refused]).unwrap();
        assert!(!guard_main(std::io::Cursor::new(format!("{line}\n"))));
    }
}
