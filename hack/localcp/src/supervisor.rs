//! Child processes that never outlive their launcher.
//!
//! # Guarantees
//! Every control-plane process runs in one process group led by a small `sh` watchdog. The
//! launcher holds the write end of the watchdog's stdin. When the launcher goes away for any
//! reason (normal exit with the control plane in a `static`, panic, `exit()`, SIGKILL) the
//! kernel closes that pipe, the watchdog reads end-of-file, sends SIGTERM to the processes it
//! was told about, waits up to 3 s, deletes the state directory (unless it is to be kept) and
//! SIGKILLs the whole group, itself included.
//!
//! Why not `PR_SET_PDEATHSIG`: it fires when the *thread* that forked the child exits, and
//! tokio's blocking-pool threads come and go, so children would die at random; it also needs
//! `unsafe`. A pipe's end-of-file is tied to the process, needs no polling and no `unsafe`.
//!
//! The watchdog ignores SIGINT/SIGTERM/SIGHUP and sits in its own process group, so a Ctrl-C
//! that kills the launcher's foreground group does not take the watchdog with it; the
//! launcher's own children get the signal only through the watchdog (or the launcher's
//! orderly [`Supervisor::stop`]).
//!
//! # Caveats
//! The watchdog is identified by PID only for the short window in which the launcher writes
//! to it; it cannot be reused while the launcher holds its unreaped `Child`. If someone
//! SIGKILLs the watchdog itself, the group keeps running until the launcher stops it.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Errors starting or stopping processes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("starting {name} ({program}): {source}; check the binary exists and is executable")]
    Spawn {
        name: String,
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("opening the log file {path}: {source}")]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the watchdog (/bin/sh): {source}")]
    Watchdog {
        #[source]
        source: std::io::Error,
    },
    #[error(
        "talking to the watchdog: {source}; it was killed from outside, so stop the control plane and start it again"
    )]
    WatchdogGone {
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The watchdog: see the module docs. Commands arrive on stdin, one per line: `pid N` (a
/// process to stop gracefully first), `forget N` (already stopped and reaped), `dir PATH`
/// (delete on exit). On end-of-file: SIGTERM to the known processes still in the group, up to
/// 3 s for them to exit, delete the directory, SIGKILL the whole group.
const WATCHDOG: &str = r#"
trap '' INT TERM HUP PIPE
pids=''
dir=''
# ours PID: the process is alive and still in our process group (a PID reused by an unrelated
# process after ours was reaped is in another group, so it is never signalled).
ours() {
  s=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) || return 1
  set -- $s
  [ "$1" != Z ] && [ "$3" = "$$" ]
}
while IFS=' ' read -r cmd arg; do
  case "$cmd" in
    pid) pids="$pids $arg" ;;
    forget) keep=''; for p in $pids; do [ "$p" = "$arg" ] || keep="$keep $p"; done; pids=$keep ;;
    dir) dir=$arg ;;
  esac
done
for p in $pids; do ours "$p" && kill -TERM "$p" 2>/dev/null; done
i=0
while [ $i -lt 30 ]; do
  alive=''
  for p in $pids; do ours "$p" && alive=1; done
  [ -z "$alive" ] && break
  sleep 0.1
  i=$((i + 1))
done
[ -n "$dir" ] && rm -rf -- "$dir"
kill -KILL -$$
"#;

/// A process group of control-plane processes and its watchdog.
#[derive(Debug)]
pub struct Supervisor {
    watchdog: Mutex<Option<(Child, ChildStdin)>>,
    pgid: u32,
}

impl Supervisor {
    /// Starts the watchdog. `remove_on_exit` is deleted when the group is torn down (pass
    /// `None` to keep the state, e.g. `localcp up --dir`).
    ///
    /// # Errors
    /// [`Error::Watchdog`] when `/bin/sh` cannot be started.
    pub fn start(remove_on_exit: Option<&Path>) -> Result<Self> {
        let mut child = Command::new("/bin/sh")
            .args(["-c", WATCHDOG, "localcp-watchdog"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // A new process group led by the watchdog; every control-plane process joins it.
            .process_group(0)
            .spawn()
            .map_err(|source| Error::Watchdog { source })?;
        let stdin = child.stdin.take().expect("stdin was piped");
        let pgid = child.id();
        let supervisor = Self {
            watchdog: Mutex::new(Some((child, stdin))),
            pgid,
        };
        if let Some(dir) = remove_on_exit {
            supervisor.tell(&format!("dir {}", dir.display()))?;
        }
        Ok(supervisor)
    }

    /// The process group id (the watchdog's PID).
    pub fn pgid(&self) -> u32 {
        self.pgid
    }

    /// The watchdog's PID.
    pub fn watchdog_pid(&self) -> u32 {
        self.pgid
    }

    fn tell(&self, line: &str) -> Result<()> {
        let mut guard = self.watchdog.lock().unwrap_or_else(|e| e.into_inner());
        let (_, stdin) = guard.as_mut().ok_or_else(|| Error::WatchdogGone {
            source: std::io::Error::new(std::io::ErrorKind::BrokenPipe, "already stopped"),
        })?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .map_err(|source| Error::WatchdogGone { source })
    }

    /// Starts `program` in the group with stdout and stderr appended to `log`.
    ///
    /// # Errors
    /// [`Error::Log`], [`Error::Spawn`] or [`Error::WatchdogGone`].
    pub fn spawn(&self, name: &str, program: &Path, args: &[String], log: &Path) -> Result<Proc> {
        let log_err = |source| Error::Log {
            path: log.to_path_buf(),
            source,
        };
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(log_err)?;
        let err = out.try_clone().map_err(log_err)?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(self.pgid as i32)
            .spawn()
            .map_err(|source| Error::Spawn {
                name: name.to_string(),
                program: program.to_path_buf(),
                source,
            })?;
        let proc = Proc {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        };
        if let Err(e) = self.tell(&format!("pid {}", proc.pid())) {
            let mut proc = proc;
            proc.kill_now();
            return Err(e);
        }
        Ok(proc)
    }

    /// Stops `proc` (SIGTERM, SIGKILL after `grace`) and tells the watchdog to forget it.
    pub fn stop_proc(&self, proc: &mut Proc, grace: Duration) -> Option<ExitStatus> {
        let status = proc.stop(grace);
        // The watchdog may already be gone while tearing down; nothing left to forget then.
        let _ = self.tell(&format!("forget {}", proc.pid()));
        status
    }

    /// Stops the watchdog after the caller has stopped (and reaped) its processes: it deletes
    /// the state directory if asked to and exits. Waits for it, so the directory is gone on
    /// return.
    pub fn stop(&self) {
        let taken = self
            .watchdog
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some((mut child, stdin)) = taken {
            drop(stdin);
            let _ = child.wait();
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One running process and its log file.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends SIGTERM; `true` when it was delivered.
    pub fn terminate(&mut self) -> bool {
        if self.exited().is_some() {
            return false;
        }
        // std can only SIGKILL; the shell's `kill` sends SIGTERM without `unsafe`. The PID is
        // ours until we reap it, so it cannot name another process.
        Command::new("/bin/sh")
            .args(["-c", "kill -TERM \"$1\"", "kill", &self.pid().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// SIGTERM, then SIGKILL if still running after `grace`; reaps the process. Blocks the
    /// thread for up to `grace`.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.exited() {
            return Some(status);
        }
        if !grace.is_zero() && self.terminate() {
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Some(status) = self.exited() {
                    return Some(status);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.kill_now()
    }

    /// SIGKILL and reap.
    pub fn kill_now(&mut self) -> Option<ExitStatus> {
        let _ = self.child.kill();
        self.child.wait().ok()
    }

    /// The last `lines` lines of the log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }
}

impl Drop for Proc {
    /// A dropped `Proc` never leaves its process running (or unreaped).
    fn drop(&mut self) {
        if self.exited().is_none() {
            self.kill_now();
        }
    }
}

/// The last `lines` lines of a file (empty when unreadable).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map(|s| {
                !s.lines()
                    .any(|l| l.starts_with("State:") && l.contains('Z'))
            })
            .unwrap_or(false)
    }

    #[test]
    fn stopping_the_watchdog_removes_the_state_directory() {
        let dir = std::env::temp_dir().join(format!("localcp-sup-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sup = Supervisor::start(Some(&dir)).unwrap();
        let mut p = sup
            .spawn(
                "sleeper",
                Path::new("/bin/sleep"),
                &["30".into()],
                &dir.join("sleeper.log"),
            )
            .unwrap();
        let pid = p.pid();
        assert!(alive(pid));
        sup.stop_proc(&mut p, Duration::from_secs(2));
        assert!(!alive(pid));
        sup.stop();
        assert!(!dir.exists());
    }

    #[test]
    fn dropping_the_watchdog_pipe_kills_the_group() {
        // Simulates the launcher dying: the watchdog sees end-of-file while the processes still
        // run and are unknown to it (never announced), so only the group kill can stop them.
        let sup = Supervisor::start(None).unwrap();
        let child = Command::new("/bin/sleep")
            .arg("30")
            .process_group(sup.pgid() as i32)
            .spawn()
            .unwrap();
        let pid = child.id();
        sup.stop();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut child = child;
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "pid {pid} survived its watchdog");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn log_tail_returns_the_last_lines() {
        let path = std::env::temp_dir().join(format!("localcp-tail-{}", std::process::id()));
        std::fs::write(&path, "a\nb\nc\nd\n").unwrap();
        assert_eq!(log_tail(&path, 2), "c\nd");
        assert_eq!(log_tail(&path, 10), "a\nb\nc\nd");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(log_tail(&path, 2), "");
    }
}
