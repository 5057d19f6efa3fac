//! Runs one external program with a deadline. A tool that hangs or floods its output must not
//! hang or crash the scan, so output is capped and the whole process group is killed on time-out.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Output kept from one stream; a version probe needs far less.
const MAX_CAPTURE_BYTES: u64 = 1 << 20;

/// What a finished probe printed.
#[derive(Debug, Clone)]
pub struct ProbeOutput {
    pub stdout: String,
    pub stderr: String,
    /// Exit code; `None` when killed by a signal.
    pub code: Option<i32>,
}

impl ProbeOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The first non-empty line of stdout, else of stderr.
    pub fn first_line(&self) -> Option<String> {
        [&self.stdout, &self.stderr]
            .into_iter()
            .flat_map(|s| s.lines())
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_string)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("did not answer within {0} ms")]
    TimedOut(u64),
    #[error("could not be started: {0}")]
    Spawn(std::io::Error),
    #[error("could not be waited for: {0}")]
    Wait(std::io::Error),
}

/// Runs `program args…` with stdin closed and `LC_ALL=C`, killing it after `timeout`.
pub fn run(program: &Path, args: &[&str], timeout: Duration) -> Result<ProbeOutput, ProbeError> {
    let mut child = Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Own process group, so a time-out kills whatever the tool started too.
        .process_group(0)
        .spawn()
        .map_err(ProbeError::Spawn)?;

    let readers: Vec<_> = [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
        child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .map(|stream| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(s) = stream {
                let _ = s.take(MAX_CAPTURE_BYTES).read_to_end(&mut text);
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    })
    .collect();

    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                kill_group(child.id());
                let _ = child.wait();
                for r in readers {
                    let _ = r.join();
                }
                return Err(ProbeError::TimedOut(timeout.as_millis() as u64));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => {
                kill_group(child.id());
                return Err(ProbeError::Wait(e));
            }
        }
    };
    // The tool may have left children holding the pipes open; they go with the group.
    kill_group(child.id());
    let mut texts = readers.into_iter().map(|r| r.join().unwrap_or_default());
    Ok(ProbeOutput {
        stdout: texts.next().unwrap_or_default(),
        stderr: texts.next().unwrap_or_default(),
        code: status.code(),
    })
}

fn kill_group(pid: u32) {
    // SAFETY: kill(2) with a negative pid signals a process group; no memory is involved.
    unsafe {
        libc::kill(-(pid as i32), libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_and_exit_code() {
        let out = run(Path::new("/bin/sh"), &["-c", "echo hello; echo oops >&2; exit 3"], Duration::from_secs(5))
            .expect("sh runs");
        assert_eq!(out.stdout.trim(), "hello");
        assert_eq!(out.stderr.trim(), "oops");
        assert_eq!(out.code, Some(3));
        assert_eq!(out.first_line().as_deref(), Some("hello"));
    }

    #[test]
    fn a_hanging_program_is_killed_on_time() {
        let started = Instant::now();
        let err = run(Path::new("/bin/sh"), &["-c", "sleep 30 & sleep 30"], Duration::from_millis(200))
            .expect_err("must time out");
        assert!(matches!(err, ProbeError::TimedOut(200)));
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    }

    #[test]
    fn a_missing_program_is_a_spawn_error() {
        let err = run(Path::new("/nonexistent/tool"), &[], Duration::from_secs(1)).expect_err("missing");
        assert!(matches!(err, ProbeError::Spawn(_)));
    }
}
