//! Whether a process the lab started still lives, and signals to it (a crash is a SIGKILL, a
//! stall a SIGSTOP).

use std::path::Path;
use std::time::Duration;

use super::LabError;

/// True when the process exists and is not a zombie whose threads have all exited. A killed
/// multi-threaded process shows its main thread as a zombie while the other threads still tear
/// down, and its sockets stay bound until the last one is gone: a restart on the same ports
/// must wait for that too.
pub fn is_alive(pid: i32) -> bool {
    living_state(pid).is_some()
}

/// True when the process exists and runs (not stopped by SIGSTOP, not a zombie).
pub fn is_running(pid: i32) -> bool {
    living_state(pid).is_some_and(|state| state != 'T')
}

/// True when `pid` lives but stands still (SIGSTOP).
pub fn is_stopped(pid: i32) -> bool {
    living_state(pid) == Some('T')
}

/// The state letter of a living process (one read of `/proc/<pid>/stat`); `None` when it is
/// gone.
fn living_state(pid: i32) -> Option<char> {
    if pid <= 0 {
        return None;
    }
    // SAFETY: signal 0 only checks for existence and permission.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = state_in_stat(&stat)?;
    alive_in_state(state, || threads_left(pid)).then_some(state)
}

/// Alive unless dead (`X`, shown while its parent reaps it) or a zombie with no thread left but
/// the main one. A process seen as a zombie is reaped later, and in between it reads `X`:
/// counting that as alive once made a restart right after a kill refuse ("already running").
fn alive_in_state(state: char, threads: impl FnOnce() -> usize) -> bool {
    match state {
        'X' | 'x' => false,
        'Z' => threads() > 1,
        _ => true,
    }
}

/// The state letter of a `/proc/<pid>/stat` line. It follows the command name, which is in
/// parentheses and may hold any character.
fn state_in_stat(stat: &str) -> Option<char> {
    stat.rfind(')')
        .and_then(|end| stat[end + 1..].trim_start().chars().next())
}

/// How many threads of `pid` still exist (a zombie's main thread counts as one).
fn threads_left(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |tasks| tasks.count())
}

/// SIGKILLs the process a pid file names and waits until it is gone (a crash, as the drills and
/// tests need it).
pub async fn kill_recorded(pidfile: &Path) -> Result<(), LabError> {
    let pid = signal_recorded(pidfile, libc::SIGKILL)?;
    while is_alive(pid) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Sends `signal` to `pid`, a process the lab started.
pub fn signal(pid: i32, signal: i32) {
    // SAFETY: kill(2) on a pid this lab started or recorded.
    unsafe { libc::kill(pid, signal) };
}

/// Sends `signal` to the process a pid file names; returns its pid.
pub fn signal_recorded(pidfile: &Path, signal: i32) -> Result<i32, LabError> {
    let pid: i32 = std::fs::read_to_string(pidfile)
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .ok_or_else(|| LabError::Io(format!("no pid in {}", pidfile.display())))?;
    self::signal(pid, signal);
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::{alive_in_state, state_in_stat};

    #[test]
    fn a_dying_process_reads_as_gone_once_only_its_main_thread_is_left() {
        let cases = [
            ("4242 (valkey-server) S 1 4242", 4, true),
            ("4242 (valkey-server) R 1 4242", 1, true),
            ("4242 (valkey-server) T 1 4242", 1, true),
            ("4242 (valkey-server) Z 1 4242", 3, true),
            ("4242 (valkey-server) Z 1 4242", 1, false),
            // Being reaped: counted alive before, which refused a restart after a kill.
            ("4242 (valkey-server) X 1 4242", 1, false),
            ("4242 (a) b) Z c) S 1 4242", 1, true),
            ("garbage", 1, false),
        ];
        for (stat, threads, alive) in cases {
            let read = state_in_stat(stat).is_some_and(|state| alive_in_state(state, || threads));
            assert_eq!(read, alive, "{stat} with {threads} threads");
        }
    }
}
